"""Contract of the payment participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_payment.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from order_contracts import (
    ORDER_SAGA,
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
from sagakit import Envelope, EventPayload, SagaService, StepOutcome
from sagakit.testing import ParticipantConformance, ParticipantHarness
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


class TestPaymentKeepsTheSagaRules(ParticipantConformance):
    spec = ORDER_SAGA
    participant = "payment"

    def create_service(self, database_url: str) -> SagaService:
        return create_service(PaymentSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_order()

    def sample_payloads(self) -> list[EventPayload]:
        return [sample_order(), sample_order(Scenario.CARD_DECLINED)]

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, OrderCreated)
        return [
            start.customer.email,
            start.payment_method,
            start.shipping_address.name,
            start.shipping_address.line1,
        ]
