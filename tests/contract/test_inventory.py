"""Contract of the inventory participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_inventory.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from inventory_service.main import create_service
from inventory_service.settings import InventorySettings
from inventory_service.tables import Reservation, ReservationLine, Stock
from order_contracts import (
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    PaymentRefunded,
    ShipmentFailed,
)
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, SagaService, StepOutcome, utc_now
from sagakit.testing import ParticipantHarness
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(InventorySettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def stock_levels(service: SagaService) -> dict[str, int]:
    async with service.store.read() as session:
        rows = (await session.execute(select(Stock))).scalars()
        return {row.sku: row.available for row in rows}


async def reservations(service: SagaService) -> list[Reservation]:
    async with service.store.read() as session:
        return list((await session.execute(select(Reservation))).scalars())


async def reserve(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """Start a saga for ``order`` and return the inventory.reserved it produced."""
    created = harness.start_saga(order)
    await harness.publish(created)
    assert harness.emitted_types == ["inventory.reserved"]
    return harness.emitted[-1]


def payment_failed(harness: ParticipantHarness, reserved: Envelope[Any]) -> Envelope[Any]:
    """payment.failed (card_declined) after ``reserved``, as payment would emit it."""
    payload = PaymentFailed(order=reserved.payload.order, reason="card_declined", detail="declined")
    return harness.event_after(
        reserved,
        payload,
        producer="payment",
        step="charge_payment",
        outcome=StepOutcome.FAILED,
        reason="card_declined",
    )


def payment_refunded(harness: ParticipantHarness, reserved: Envelope[Any]) -> Envelope[Any]:
    """The backward path from a shipment that failed, up to payment.refunded."""
    order = reserved.payload.order
    total = order.total()
    processed = harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="pay-1", amount=total, currency=order.currency),
        producer="payment",
        step="charge_payment",
    )
    failed = harness.event_after(
        processed,
        ShipmentFailed(order=order, reason="destination_not_served"),
        producer="shipping",
        step="ship_order",
        outcome=StepOutcome.FAILED,
        reason="destination_not_served",
    )
    return harness.event_after(
        failed,
        PaymentRefunded(order=order, payment_id="pay-1", amount=total),
        producer="payment",
        step="charge_payment",
        outcome=StepOutcome.COMPENSATED,
    )


async def test_order_created_reserves_stock(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    created = harness.start_saga(order)

    await harness.publish(created)

    [reserved] = check_wire(
        harness.emitted, ["inventory.reserved"], producer="inventory", cause=created, order=order
    )
    assert isinstance(reserved.payload, InventoryReserved)
    assert reserved.payload.reservation_id
    record = reserved.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "reserve_stock",
        "inventory",
        StepOutcome.COMPLETED,
    )
    levels = await stock_levels(harness.service)
    assert levels["SKU-APPLE"] == 1000 - 2
    assert levels["SKU-PEAR"] == 1000
    [reservation] = await reservations(harness.service)
    assert reservation.saga_id == str(created.context.saga_id)
    assert reservation.reservation_id == reserved.payload.reservation_id
    assert reservation.order_id == order.order_id
    assert reservation.status == "active"
    async with harness.service.store.read() as session:
        lines = (await session.execute(select(ReservationLine))).scalars().all()
    assert [(line.sku, line.quantity) for line in lines] == [("SKU-APPLE", 2)]


async def test_lines_of_one_sku_are_reserved_together(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    base = sample_order()
    line = base.items[0]
    order = base.model_copy(update={"items": (line, line.model_copy(update={"quantity": 5}))})
    created = harness.start_saga(order)

    await harness.publish(created)

    check_wire(
        harness.emitted, ["inventory.reserved"], producer="inventory", cause=created, order=order
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000 - 7


async def test_insufficient_stock_fails_the_step_and_cancels_the_order(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.OUT_OF_STOCK)
    created = harness.start_saga(order)

    await harness.publish(created)

    failed, cancelled = check_wire(
        harness.emitted,
        ["inventory.reservation_failed", "order.cancelled"],
        producer="inventory",
        cause=created,
        order=order,
    )
    assert isinstance(failed.payload, InventoryReservationFailed)
    assert failed.payload.reason == "insufficient_stock"
    assert "SKU-RARE" in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.outcome, record.reason) == (
        "reserve_stock",
        StepOutcome.FAILED,
        "insufficient_stock",
    )
    assert isinstance(cancelled.payload, OrderCancelled)
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "reserve_stock",
        "insufficient_stock",
    )
    assert await reservations(harness.service) == []
    levels = await stock_levels(harness.service)
    assert (levels["SKU-RARE"], levels["SKU-APPLE"]) == (0, 1000)


async def test_an_unknown_sku_counts_as_no_stock(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    base = sample_order()
    order = base.model_copy(
        update={"items": (base.items[0].model_copy(update={"sku": "SKU-UNKNOWN"}),)}
    )
    created = harness.start_saga(order)

    await harness.publish(created)

    failed, _ = check_wire(
        harness.emitted,
        ["inventory.reservation_failed", "order.cancelled"],
        producer="inventory",
        cause=created,
        order=order,
    )
    assert failed.payload.reason == "insufficient_stock"
    assert "SKU-UNKNOWN" not in await stock_levels(harness.service)


async def test_a_partial_shortage_reserves_nothing(harness: ParticipantHarness) -> None:
    base = sample_order()
    apples = base.items[0]
    order = base.model_copy(
        update={"items": (apples, apples.model_copy(update={"sku": "SKU-RARE", "quantity": 1}))}
    )

    await harness.publish(harness.start_saga(order))

    assert harness.emitted_types == ["inventory.reservation_failed", "order.cancelled"]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000
    assert await reservations(harness.service) == []


async def test_payment_failed_releases_the_stock_and_cancels_the_order(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.CARD_DECLINED)
    reserved = await reserve(harness, order)
    trigger = payment_failed(harness, reserved)

    await harness.publish(trigger)

    released, cancelled = check_wire(
        harness.emitted[1:],
        ["inventory.released", "order.cancelled"],
        producer="inventory",
        cause=trigger,
        order=order,
    )
    assert isinstance(released.payload, InventoryReleased)
    assert released.payload.reservation_id == reserved.payload.reservation_id
    record = released.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "reserve_stock",
        "inventory",
        StepOutcome.COMPENSATED,
    )
    assert isinstance(cancelled.payload, OrderCancelled)
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "charge_payment",
        "card_declined",
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000
    [reservation] = await reservations(harness.service)
    assert reservation.status == "released"
    assert reservation.released_at is not None


async def test_payment_refunded_releases_the_stock_and_names_the_failed_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.NOT_SERVED)
    reserved = await reserve(harness, order)
    trigger = payment_refunded(harness, reserved)

    await harness.publish(trigger)

    released, cancelled = check_wire(
        harness.emitted[1:],
        ["inventory.released", "order.cancelled"],
        producer="inventory",
        cause=trigger,
        order=order,
    )
    assert released.payload.reservation_id == reserved.payload.reservation_id
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "ship_order",
        "destination_not_served",
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


async def test_a_duplicate_order_created_changes_nothing(harness: ParticipantHarness) -> None:
    created = harness.start_saga(sample_order())

    await harness.publish(created)
    await harness.publish(created)

    assert harness.emitted_types == ["inventory.reserved"]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 998
    assert len(await reservations(harness.service)) == 1


async def test_a_duplicate_compensation_request_releases_once(
    harness: ParticipantHarness,
) -> None:
    reserved = await reserve(harness, sample_order())
    trigger = payment_failed(harness, reserved)

    await harness.publish(trigger)
    await harness.publish(trigger)

    assert harness.emitted_types == [
        "inventory.reserved",
        "inventory.released",
        "order.cancelled",
    ]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


async def test_a_second_compensation_request_announces_again_and_releases_nothing(
    harness: ParticipantHarness,
) -> None:
    reserved = await reserve(harness, sample_order())
    await harness.publish(payment_failed(harness, reserved))
    first = harness.emitted[1:]

    await harness.publish(payment_refunded(harness, reserved))

    again = harness.emitted[3:]
    assert [e.event_type for e in again] == ["inventory.released", "order.cancelled"]
    # The same derived ids: consumers downstream drop the repeat in their inbox.
    assert [e.event_id for e in again] == [e.event_id for e in first]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


@pytest.mark.parametrize("claims_the_step", [False, True], ids=["plain", "forged_history"])
async def test_a_compensation_request_for_a_saga_never_seen_is_parked_as_unknown_saga(
    harness: ParticipantHarness, claims_the_step: bool
) -> None:
    order = sample_order()
    created = harness.start_saga(order)
    # inventory.reserved as a stranger would write it: inventory never reserved anything
    # for this saga (with forged_history, its context even says inventory did).
    never_reserved = harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="elsewhere"),
        producer="inventory",
        step="reserve_stock" if claims_the_step else None,
    )
    trigger = payment_failed(harness, never_reserved)

    await harness.publish(trigger)

    # No release, no cancellation, no notice to a customer of an order nobody placed.
    assert harness.emitted_types == []
    [parked] = harness.parked
    assert parked.reason.startswith("unknown_saga: payment.failed asks inventory to undo")
    assert await reservations(harness.service) == []
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


async def test_a_parked_strangers_request_does_not_hold_back_the_saga_it_names(
    harness: ParticipantHarness,
) -> None:
    order = sample_order()
    created = harness.start_saga(order)
    stand_in = harness.event_after(
        created, InventoryReserved(order=order, reservation_id="r"), producer="inventory"
    )
    await harness.publish(payment_failed(harness, stand_in))

    await harness.publish(created)

    # The parked request left no trace: the saga's own start event reserves as usual.
    assert harness.emitted_types == ["inventory.reserved"]
    assert [p.reason.split(":")[0] for p in harness.parked] == ["unknown_saga"]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 998


async def test_a_republished_order_created_after_release_does_not_reserve_again(
    harness: ParticipantHarness,
) -> None:
    reserved = await reserve(harness, sample_order())
    await harness.publish(payment_failed(harness, reserved))
    created_again = Envelope.new(
        sample_order(order_id=reserved.payload.order.order_id),
        context=reserved.context.model_copy(update={"steps": (), "causation_id": None}),
        producer="test",
    )

    await harness.publish(created_again)

    assert harness.emitted_types == ["inventory.reserved", "inventory.released", "order.cancelled"]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000
    [reservation] = await reservations(harness.service)
    assert reservation.status == "released"


async def test_a_past_deadline_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    created = harness.start_saga(order, deadline=utc_now() - timedelta(seconds=1))

    await harness.publish(created)

    failed, cancelled = check_wire(
        harness.emitted,
        ["inventory.reservation_failed", "order.cancelled"],
        producer="inventory",
        cause=created,
        order=order,
    )
    assert failed.payload.reason == "deadline_exceeded"
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "reserve_stock",
        "deadline_exceeded",
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


async def test_a_future_deadline_does_not_stop_the_step(harness: ParticipantHarness) -> None:
    created = harness.start_saga(sample_order(), deadline=utc_now() + timedelta(minutes=5))

    await harness.publish(created)

    assert harness.emitted_types == ["inventory.reserved"]


def _mangled(created: Envelope[Any], how: str) -> bytes:
    body = json.loads(created.encode())
    if how == "not_json":
        return b"{this is not json"
    if how == "schema_invalid":
        del body["payload"]["items"]
    elif how == "schema_version":
        body["schema_version"] = 2
    elif how == "saga_type":
        body["context"]["saga_type"] = "something_else"
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
async def test_a_bad_message_is_parked_with_its_reason(
    harness: ParticipantHarness, how: str, reason: str
) -> None:
    created = harness.start_saga(sample_order())

    await harness.publish_raw(_mangled(created, how), routing_key="order.created")

    [parked] = harness.parked
    assert parked.reason.startswith(reason)
    assert parked.headers["x-saga-origin-queue"] == "inventory.order.created"
    # A raw publish that still parses is recorded as if emitted: only the service's count.
    assert [e for e in harness.emitted if e.producer == "inventory"] == []
    assert await reservations(harness.service) == []
    # The consumer lives on: the next valid order is served.
    await harness.publish(created)
    assert [e.event_type for e in harness.emitted if e.producer == "inventory"] == [
        "inventory.reserved"
    ]


async def test_stock_comes_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVENTORY_STOCK", json.dumps({"SKU-APPLE": 1, "SKU-FIG": 3}))
    service = create_service(InventorySettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        await harness.publish(harness.start_saga(sample_order()))

        assert harness.emitted_types == ["inventory.reservation_failed", "order.cancelled"]
        assert await stock_levels(service) == {"SKU-APPLE": 1, "SKU-FIG": 3}


async def test_no_personal_data_in_logs(
    harness: ParticipantHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # The service's own loggers at their most talkative, everything else at the default level.
    caplog.set_level(logging.INFO)
    for name in ("sagakit", "inventory_service"):
        caplog.set_level(logging.DEBUG, logger=name)
    order = sample_order()
    reserved = await reserve(harness, order)
    await harness.publish(payment_failed(harness, reserved))
    await harness.publish(harness.start_saga(sample_order(Scenario.OUT_OF_STOCK)))

    assert len(harness.emitted) == 5
    assert caplog.records, "nothing was logged, so nothing was checked"
    personal = (
        order.customer.email,
        order.payment_method,
        order.shipping_address.name,
        order.shipping_address.line1,
    )
    for record in caplog.records:
        line = record.getMessage()
        assert not any(value in line for value in personal), line
