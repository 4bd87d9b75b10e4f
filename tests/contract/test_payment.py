"""Contract of the payment participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_payment.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from order_contracts import (
    InventoryReserved,
    NotificationFailed,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    PaymentRefunded,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
)
from order_contracts.samples import Scenario, sample_order
from payment_service.main import create_service
from payment_service.settings import PaymentSettings
from payment_service.tables import Payment, Refund
from sagakit import Envelope, SagaService, StepOutcome, utc_now
from sagakit.testing import ParticipantHarness
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(PaymentSettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def payments(service: SagaService) -> list[Payment]:
    async with service.store.read() as session:
        return list((await session.execute(select(Payment))).scalars())


async def refunds(service: SagaService) -> list[Refund]:
    async with service.store.read() as session:
        return list((await session.execute(select(Refund))).scalars())


def reserved_event(
    harness: ParticipantHarness, order: OrderCreated, *, deadline: datetime | None = None
) -> Envelope[Any]:
    """inventory.reserved for a new saga of ``order``, as inventory would emit it."""
    created = harness.start_saga(order, deadline=deadline)
    return harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="res-1"),
        producer="inventory",
        step="reserve_stock",
    )


async def charge(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """Publish inventory.reserved for ``order``; return the payment.processed it produced."""
    await harness.publish(reserved_event(harness, order))
    assert harness.emitted_types[-1] == "payment.processed"
    return harness.emitted[-1]


def shipment_failed(harness: ParticipantHarness, processed: Envelope[Any]) -> Envelope[Any]:
    """shipment.failed after ``processed``, as shipping would emit it."""
    return harness.event_after(
        processed,
        ShipmentFailed(order=processed.payload.order, reason="destination_not_served"),
        producer="shipping",
        step="ship_order",
        outcome=StepOutcome.FAILED,
        reason="destination_not_served",
    )


def shipment_cancelled(harness: ParticipantHarness, processed: Envelope[Any]) -> Envelope[Any]:
    """The backward path from a notification that failed, up to shipment.cancelled."""
    order = processed.payload.order
    created = harness.event_after(
        processed,
        ShipmentCreated(order=order, shipment_id="shp-1", tracking_number="SK1"),
        producer="shipping",
        step="ship_order",
    )
    failed = harness.event_after(
        created,
        NotificationFailed(order=order, reason="contact_unreachable"),
        producer="notification",
        step="confirm_order",
        outcome=StepOutcome.FAILED,
        reason="contact_unreachable",
    )
    return harness.event_after(
        failed,
        ShipmentCancelled(order=order, shipment_id="shp-1"),
        producer="shipping",
        step="ship_order",
        outcome=StepOutcome.COMPENSATED,
    )


COMPENSATION_TRIGGERS = {
    "shipment.failed": shipment_failed,
    "shipment.cancelled": shipment_cancelled,
}


@pytest.mark.parametrize("token", ["tok_visa", "tok_mastercard"])
async def test_inventory_reserved_charges_the_order(
    harness: ParticipantHarness, check_wire: WireCheck, token: str
) -> None:
    order = sample_order().model_copy(update={"payment_method": token})
    reserved = reserved_event(harness, order)

    await harness.publish(reserved)

    [processed] = check_wire(
        harness.emitted, ["payment.processed"], producer="payment", cause=reserved, order=order
    )
    assert isinstance(processed.payload, PaymentProcessed)
    assert processed.payload.payment_id
    assert processed.payload.amount == Decimal("3.00")
    assert processed.payload.currency == "EUR"
    # Money on the wire is a decimal string, never a float.
    assert json.loads(processed.encode())["payload"]["amount"] == "3.00"
    record = processed.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "charge_payment",
        "payment",
        StepOutcome.COMPLETED,
    )
    [payment] = await payments(harness.service)
    assert payment.saga_id == str(reserved.context.saga_id)
    assert payment.payment_id == processed.payload.payment_id
    assert payment.order_id == order.order_id
    assert (payment.amount, payment.currency, payment.status) == (
        Decimal("3.00"),
        "EUR",
        "captured",
    )
    assert payment.refunded_at is None
    assert await refunds(harness.service) == []


@pytest.mark.parametrize("token", ["tok_declined", "tok_unknown"])
async def test_a_token_not_approved_is_declined(
    harness: ParticipantHarness, check_wire: WireCheck, token: str
) -> None:
    order = sample_order(Scenario.CARD_DECLINED).model_copy(update={"payment_method": token})
    reserved = reserved_event(harness, order)

    await harness.publish(reserved)

    [failed] = check_wire(
        harness.emitted, ["payment.failed"], producer="payment", cause=reserved, order=order
    )
    assert isinstance(failed.payload, PaymentFailed)
    assert failed.payload.reason == "card_declined"
    assert token not in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.participant, record.outcome, record.reason) == (
        "charge_payment",
        "payment",
        StepOutcome.FAILED,
        "card_declined",
    )
    assert await payments(harness.service) == []


async def test_an_order_over_the_limit_is_refused(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.LIMIT_EXCEEDED)
    reserved = reserved_event(harness, order)

    await harness.publish(reserved)

    [failed] = check_wire(
        harness.emitted, ["payment.failed"], producer="payment", cause=reserved, order=order
    )
    assert failed.payload.reason == "limit_exceeded"
    assert "6000.00" in failed.payload.detail
    assert await payments(harness.service) == []


async def test_an_order_at_the_limit_is_charged(harness: ParticipantHarness) -> None:
    base = sample_order()
    line = base.items[0].model_copy(update={"quantity": 2, "unit_price": Decimal("2500.00")})
    order = base.model_copy(update={"items": (line,)})

    processed = await charge(harness, order)

    assert processed.payload.amount == Decimal("5000.00")


@pytest.mark.parametrize("trigger", sorted(COMPENSATION_TRIGGERS))
async def test_compensation_refunds_the_charge(
    harness: ParticipantHarness, check_wire: WireCheck, trigger: str
) -> None:
    order = sample_order()
    processed = await charge(harness, order)
    backward = COMPENSATION_TRIGGERS[trigger](harness, processed)
    assert backward.event_type == trigger

    await harness.publish(backward)

    [refunded] = check_wire(
        harness.emitted[1:], ["payment.refunded"], producer="payment", cause=backward, order=order
    )
    assert isinstance(refunded.payload, PaymentRefunded)
    assert refunded.payload.payment_id == processed.payload.payment_id
    assert refunded.payload.amount == Decimal("3.00")
    record = refunded.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "charge_payment",
        "payment",
        StepOutcome.COMPENSATED,
    )
    [payment] = await payments(harness.service)
    assert payment.status == "refunded"
    assert payment.refunded_at is not None
    [refund] = await refunds(harness.service)
    assert refund.payment_id == processed.payload.payment_id
    assert refund.amount == Decimal("3.00")


async def test_a_duplicate_inventory_reserved_charges_once(harness: ParticipantHarness) -> None:
    reserved = reserved_event(harness, sample_order())

    await harness.publish(reserved)
    await harness.publish(reserved)

    assert harness.emitted_types == ["payment.processed"]
    assert len(await payments(harness.service)) == 1


async def test_a_duplicate_compensation_request_refunds_once(
    harness: ParticipantHarness,
) -> None:
    processed = await charge(harness, sample_order())
    backward = shipment_failed(harness, processed)

    await harness.publish(backward)
    await harness.publish(backward)

    assert harness.emitted_types == ["payment.processed", "payment.refunded"]
    assert len(await refunds(harness.service)) == 1


async def test_a_second_compensation_request_announces_again_and_refunds_nothing(
    harness: ParticipantHarness,
) -> None:
    processed = await charge(harness, sample_order())
    await harness.publish(shipment_failed(harness, processed))
    [first] = harness.emitted[1:]

    await harness.publish(shipment_cancelled(harness, processed))

    [again] = harness.emitted[2:]
    assert again.event_type == "payment.refunded"
    assert again.event_id == first.event_id
    [refund] = await refunds(harness.service)
    assert refund.amount == Decimal("3.00")


async def test_a_compensation_request_for_a_saga_never_seen_is_parked_as_unknown_saga(
    harness: ParticipantHarness,
) -> None:
    order = sample_order()
    reserved = reserved_event(harness, order)
    never_charged = harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="elsewhere", amount=order.total(), currency="EUR"),
        producer="payment",
        step="charge_payment",  # the history says payment charged: it did not, here
    )
    backward = shipment_failed(harness, never_charged)

    await harness.publish(backward)

    assert harness.emitted_types == []
    [parked] = harness.parked
    assert parked.reason.startswith("unknown_saga: shipment.failed asks payment to undo")
    assert await payments(harness.service) == []
    assert await refunds(harness.service) == []


async def test_a_parked_strangers_request_does_not_hold_back_the_saga_it_names(
    harness: ParticipantHarness,
) -> None:
    order = sample_order()
    reserved = reserved_event(harness, order)
    stand_in = harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="p", amount=order.total(), currency="EUR"),
        producer="payment",
    )
    await harness.publish(shipment_failed(harness, stand_in))

    await harness.publish(reserved)

    assert harness.emitted_types == ["payment.processed"]
    assert [p.reason.split(":")[0] for p in harness.parked] == ["unknown_saga"]
    assert len(await payments(harness.service)) == 1


async def test_a_republished_inventory_reserved_after_refund_does_not_charge_again(
    harness: ParticipantHarness,
) -> None:
    processed = await charge(harness, sample_order())
    await harness.publish(shipment_failed(harness, processed))
    reserved_again = Envelope.new(
        InventoryReserved(order=processed.payload.order, reservation_id="res-1"),
        context=processed.context.model_copy(update={"steps": ()}),
        producer="inventory",
    )

    await harness.publish(reserved_again)

    assert harness.emitted_types == ["payment.processed", "payment.refunded"]
    [payment] = await payments(harness.service)
    assert payment.status == "refunded"
    assert len(await refunds(harness.service)) == 1


async def test_a_past_deadline_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    reserved = reserved_event(harness, order, deadline=utc_now() - timedelta(seconds=1))

    await harness.publish(reserved)

    [failed] = check_wire(
        harness.emitted, ["payment.failed"], producer="payment", cause=reserved, order=order
    )
    assert failed.payload.reason == "deadline_exceeded"
    assert failed.context.steps[-1].reason == "deadline_exceeded"
    assert await payments(harness.service) == []


def _mangled(event: Envelope[Any], how: str) -> bytes:
    body = json.loads(event.encode())
    if how == "not_json":
        return b"\xff\xfe not json"
    if how == "schema_invalid":
        body["payload"]["order"]["items"][0]["unit_price"] = 1.5  # money as a float
    elif how == "schema_version":
        body["schema_version"] = 7
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
async def test_a_bad_inventory_reserved_is_parked_with_its_reason(
    harness: ParticipantHarness, how: str, reason: str
) -> None:
    reserved = reserved_event(harness, sample_order())

    await harness.publish_raw(_mangled(reserved, how), routing_key="inventory.reserved")

    [parked] = harness.parked
    assert parked.reason.startswith(reason)
    assert parked.headers["x-saga-origin-queue"] == "payment.inventory.reserved"
    # A raw publish that still parses is recorded as if emitted: only the service's count.
    assert [e for e in harness.emitted if e.producer == "payment"] == []
    assert await payments(harness.service) == []
    # The consumer lives on: the next valid event is served.
    await harness.publish(reserved)
    assert [e.event_type for e in harness.emitted if e.producer == "payment"] == [
        "payment.processed"
    ]


async def test_a_bad_compensation_request_is_parked_and_refunds_nothing(
    harness: ParticipantHarness,
) -> None:
    processed = await charge(harness, sample_order())
    backward = shipment_failed(harness, processed)

    await harness.publish_raw(_mangled(backward, "schema_invalid"), routing_key="shipment.failed")

    [parked] = harness.parked
    assert parked.reason.startswith("schema_invalid")
    assert parked.headers["x-saga-origin-queue"] == "payment.shipment.failed"
    assert await refunds(harness.service) == []


async def test_approved_tokens_and_limit_come_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYMENT_APPROVED_TOKENS", json.dumps(["tok_amex"]))
    monkeypatch.setenv("PAYMENT_ORDER_LIMIT", "10.00")
    service = create_service(PaymentSettings(database_url=database_url))
    amex = sample_order().model_copy(update={"payment_method": "tok_amex"})
    big_amex = sample_order(Scenario.LIMIT_EXCEEDED).model_copy(
        update={"payment_method": "tok_amex"}
    )
    async with ParticipantHarness(service) as harness:
        for order in (sample_order(), amex, big_amex):
            await harness.publish(reserved_event(harness, order))

        assert harness.emitted_types == ["payment.failed", "payment.processed", "payment.failed"]
        assert [e.payload.reason for e in harness.emitted if e.event_type == "payment.failed"] == [
            "card_declined",
            "limit_exceeded",
        ]


async def test_no_personal_data_in_logs(
    harness: ParticipantHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # The service's own loggers at their most talkative, everything else at the default level.
    caplog.set_level(logging.INFO)
    for name in ("sagakit", "payment_service"):
        caplog.set_level(logging.DEBUG, logger=name)
    order = sample_order()
    processed = await charge(harness, order)
    await harness.publish(shipment_failed(harness, processed))
    declined = sample_order(Scenario.CARD_DECLINED)
    await harness.publish(reserved_event(harness, declined))

    assert harness.emitted_types == ["payment.processed", "payment.refunded", "payment.failed"]
    assert caplog.records, "nothing was logged, so nothing was checked"
    personal = (
        order.customer.email,
        order.payment_method,
        declined.payment_method,
        order.shipping_address.name,
        order.shipping_address.line1,
    )
    for record in caplog.records:
        line = record.getMessage()
        assert not any(value in line for value in personal), line
