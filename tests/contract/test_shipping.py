"""Contract of the shipping participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_shipping.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from order_contracts import (
    InventoryReserved,
    NotificationFailed,
    OrderCreated,
    PaymentProcessed,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
)
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, SagaService, StepOutcome, utc_now
from sagakit.testing import ParticipantHarness
from shipping_service.main import create_service
from shipping_service.settings import ShippingSettings
from shipping_service.tables import Shipment
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(ShippingSettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def shipments(service: SagaService) -> list[Shipment]:
    async with service.store.read() as session:
        return list((await session.execute(select(Shipment))).scalars())


def in_country(country: str) -> OrderCreated:
    order = sample_order()
    address = order.shipping_address.model_copy(update={"country": country})
    return order.model_copy(update={"shipping_address": address})


def processed_event(
    harness: ParticipantHarness, order: OrderCreated, *, deadline: datetime | None = None
) -> Envelope[Any]:
    """payment.processed for a new saga of ``order``, as payment would emit it."""
    created = harness.start_saga(order, deadline=deadline)
    reserved = harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="res-1"),
        producer="inventory",
        step="reserve_stock",
    )
    return harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="pay-1", amount=order.total(), currency="EUR"),
        producer="payment",
        step="charge_payment",
    )


async def ship(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """Publish payment.processed for ``order``; return the shipment.created it produced."""
    await harness.publish(processed_event(harness, order))
    assert harness.emitted_types[-1] == "shipment.created"
    return harness.emitted[-1]


def notification_failed(harness: ParticipantHarness, created: Envelope[Any]) -> Envelope[Any]:
    """notification.failed after ``created``, as notification would emit it."""
    return harness.event_after(
        created,
        NotificationFailed(order=created.payload.order, reason="contact_unreachable"),
        producer="notification",
        step="confirm_order",
        outcome=StepOutcome.FAILED,
        reason="contact_unreachable",
    )


@pytest.mark.parametrize("country", ["DE", "GB", "US", "CA"])
async def test_payment_processed_books_a_shipment(
    harness: ParticipantHarness, check_wire: WireCheck, country: str
) -> None:
    order = in_country(country)
    processed = processed_event(harness, order)

    await harness.publish(processed)

    [created] = check_wire(
        harness.emitted, ["shipment.created"], producer="shipping", cause=processed, order=order
    )
    assert isinstance(created.payload, ShipmentCreated)
    assert created.payload.shipment_id
    assert created.payload.tracking_number.startswith("SK")
    record = created.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "ship_order",
        "shipping",
        StepOutcome.COMPLETED,
    )
    [shipment] = await shipments(harness.service)
    assert shipment.saga_id == str(processed.context.saga_id)
    assert shipment.shipment_id == created.payload.shipment_id
    assert shipment.tracking_number == created.payload.tracking_number
    assert (shipment.order_id, shipment.country, shipment.status) == (
        order.order_id,
        country,
        "booked",
    )
    assert shipment.cancelled_at is None


async def test_each_shipment_gets_its_own_tracking_number(harness: ParticipantHarness) -> None:
    first = await ship(harness, sample_order())
    second = await ship(harness, sample_order())

    assert first.payload.tracking_number != second.payload.tracking_number
    assert len(await shipments(harness.service)) == 2


@pytest.mark.parametrize("country", ["AQ", "JP"])
async def test_a_destination_not_served_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck, country: str
) -> None:
    order = in_country(country)
    processed = processed_event(harness, order)

    await harness.publish(processed)

    [failed] = check_wire(
        harness.emitted, ["shipment.failed"], producer="shipping", cause=processed, order=order
    )
    assert isinstance(failed.payload, ShipmentFailed)
    assert failed.payload.reason == "destination_not_served"
    assert country in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.participant, record.outcome, record.reason) == (
        "ship_order",
        "shipping",
        StepOutcome.FAILED,
        "destination_not_served",
    )
    assert await shipments(harness.service) == []


async def test_the_sample_not_served_order_fails(harness: ParticipantHarness) -> None:
    await harness.publish(processed_event(harness, sample_order(Scenario.NOT_SERVED)))

    assert harness.emitted_types == ["shipment.failed"]
    assert harness.emitted[0].payload.reason == "destination_not_served"


async def test_notification_failed_cancels_the_shipment(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.UNREACHABLE)
    created = await ship(harness, order)
    backward = notification_failed(harness, created)

    await harness.publish(backward)

    [cancelled] = check_wire(
        harness.emitted[1:],
        ["shipment.cancelled"],
        producer="shipping",
        cause=backward,
        order=order,
    )
    assert isinstance(cancelled.payload, ShipmentCancelled)
    assert cancelled.payload.shipment_id == created.payload.shipment_id
    record = cancelled.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "ship_order",
        "shipping",
        StepOutcome.COMPENSATED,
    )
    [shipment] = await shipments(harness.service)
    assert shipment.status == "cancelled"
    assert shipment.cancelled_at is not None


async def test_a_duplicate_payment_processed_ships_once(harness: ParticipantHarness) -> None:
    processed = processed_event(harness, sample_order())

    await harness.publish(processed)
    await harness.publish(processed)

    assert harness.emitted_types == ["shipment.created"]
    assert len(await shipments(harness.service)) == 1


async def test_a_duplicate_compensation_request_cancels_once(
    harness: ParticipantHarness,
) -> None:
    created = await ship(harness, sample_order())
    backward = notification_failed(harness, created)

    await harness.publish(backward)
    await harness.publish(backward)

    assert harness.emitted_types == ["shipment.created", "shipment.cancelled"]
    [shipment] = await shipments(harness.service)
    assert shipment.status == "cancelled"


async def test_a_second_compensation_request_announces_again_and_changes_nothing(
    harness: ParticipantHarness,
) -> None:
    created = await ship(harness, sample_order())
    await harness.publish(notification_failed(harness, created))
    [first] = harness.emitted[1:]
    [shipment] = await shipments(harness.service)

    await harness.publish(notification_failed(harness, created))

    [again] = harness.emitted[2:]
    assert (again.event_type, again.event_id) == ("shipment.cancelled", first.event_id)
    [unchanged] = await shipments(harness.service)
    assert (unchanged.status, unchanged.cancelled_at) == ("cancelled", shipment.cancelled_at)


async def test_a_compensation_request_for_a_saga_never_seen_is_parked_as_unknown_saga(
    harness: ParticipantHarness,
) -> None:
    order = sample_order()
    processed = processed_event(harness, order)
    never_shipped = harness.event_after(
        processed,
        ShipmentCreated(order=order, shipment_id="elsewhere", tracking_number="SK0"),
        producer="shipping",
    )
    backward = notification_failed(harness, never_shipped)

    await harness.publish(backward)

    assert harness.emitted_types == []
    [parked] = harness.parked
    assert parked.reason.startswith("unknown_saga: notification.failed asks shipping to undo")
    assert await shipments(harness.service) == []


async def test_a_parked_strangers_request_does_not_hold_back_the_saga_it_names(
    harness: ParticipantHarness,
) -> None:
    order = sample_order()
    processed = processed_event(harness, order)
    stand_in = harness.event_after(
        processed,
        ShipmentCreated(order=order, shipment_id="s", tracking_number="SK0"),
        producer="shipping",
    )
    await harness.publish(notification_failed(harness, stand_in))

    await harness.publish(processed)

    assert harness.emitted_types == ["shipment.created"]
    assert [p.reason.split(":")[0] for p in harness.parked] == ["unknown_saga"]
    assert len(await shipments(harness.service)) == 1


async def test_a_republished_payment_processed_after_cancellation_does_not_ship_again(
    harness: ParticipantHarness,
) -> None:
    created = await ship(harness, sample_order())
    await harness.publish(notification_failed(harness, created))
    order = created.payload.order
    processed_again = Envelope.new(
        PaymentProcessed(order=order, payment_id="pay-1", amount=order.total(), currency="EUR"),
        context=created.context.model_copy(update={"steps": ()}),
        producer="payment",
    )

    await harness.publish(processed_again)

    assert harness.emitted_types == ["shipment.created", "shipment.cancelled"]
    [shipment] = await shipments(harness.service)
    assert shipment.status == "cancelled"


async def test_a_past_deadline_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    processed = processed_event(harness, order, deadline=utc_now() - timedelta(seconds=1))

    await harness.publish(processed)

    [failed] = check_wire(
        harness.emitted, ["shipment.failed"], producer="shipping", cause=processed, order=order
    )
    assert failed.payload.reason == "deadline_exceeded"
    assert await shipments(harness.service) == []


def _mangled(event: Envelope[Any], how: str) -> bytes:
    body = json.loads(event.encode())
    if how == "not_json":
        return b"[1, 2"
    if how == "schema_invalid":
        body["payload"]["order"]["shipping_address"]["country"] = "Germany"
    elif how == "schema_version":
        body["schema_version"] = 3
    elif how == "saga_type":
        body["context"]["saga_type"] = "returns"
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("not_json", "undecodable"),
        ("schema_invalid", "schema_invalid"),
        ("schema_version", "unsupported_schema_version"),
        ("saga_type", "unknown_saga_type"),
    ],
)
async def test_a_bad_payment_processed_is_parked_with_its_reason(
    harness: ParticipantHarness, how: str, reason: str
) -> None:
    processed = processed_event(harness, sample_order())

    await harness.publish_raw(_mangled(processed, how), routing_key="payment.processed")

    [parked] = harness.parked
    assert parked.reason.startswith(reason)
    assert parked.headers["x-saga-origin-queue"] == "shipping.payment.processed"
    # A raw publish that still parses is recorded as if emitted: only the service's count.
    assert [e for e in harness.emitted if e.producer == "shipping"] == []
    assert await shipments(harness.service) == []
    # The consumer lives on: the next valid event is served.
    await harness.publish(processed)
    assert [e.event_type for e in harness.emitted if e.producer == "shipping"] == [
        "shipment.created"
    ]


async def test_served_countries_come_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPPING_SERVED_COUNTRIES", json.dumps(["aq", "JP"]))
    service = create_service(ShippingSettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        for country in ("AQ", "JP", "DE"):
            await harness.publish(processed_event(harness, in_country(country)))

        assert harness.emitted_types == ["shipment.created", "shipment.created", "shipment.failed"]


async def test_no_personal_data_in_logs(
    harness: ParticipantHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # The service's own loggers at their most talkative, everything else at the default level.
    caplog.set_level(logging.INFO)
    for name in ("sagakit", "shipping_service"):
        caplog.set_level(logging.DEBUG, logger=name)
    order = sample_order()
    created = await ship(harness, order)
    await harness.publish(notification_failed(harness, created))
    await harness.publish(processed_event(harness, sample_order(Scenario.NOT_SERVED)))

    assert harness.emitted_types == ["shipment.created", "shipment.cancelled", "shipment.failed"]
    assert caplog.records, "nothing was logged, so nothing was checked"
    address = order.shipping_address
    personal = (
        order.customer.email,
        order.payment_method,
        address.name,
        address.line1,
        address.postal_code,
    )
    for record in caplog.records:
        line = record.getMessage()
        assert not any(value in line for value in personal), line
