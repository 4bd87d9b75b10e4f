"""Contract of the notification participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_notification.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from notification_service.main import create_service
from notification_service.settings import NotificationSettings
from notification_service.tables import Notice
from order_contracts import (
    ORDER_SAGA,
    InventoryReservationFailed,
    InventoryReserved,
    NotificationFailed,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    PaymentProcessed,
    ShipmentCreated,
)
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, EventPayload, SagaService, StepOutcome
from sagakit.testing import ParticipantConformance, ParticipantHarness
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(NotificationSettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def notices(service: SagaService) -> list[Notice]:
    async with service.store.read() as session:
        return list((await session.execute(select(Notice).order_by(Notice.created_at))).scalars())


def with_email(email: str) -> OrderCreated:
    order = sample_order()
    return order.model_copy(update={"customer": order.customer.model_copy(update={"email": email})})


def shipped_event(
    harness: ParticipantHarness, order: OrderCreated, *, deadline: datetime | None = None
) -> Envelope[Any]:
    """shipment.created for a new saga of ``order``, as shipping would emit it."""
    created = harness.start_saga(order, deadline=deadline)
    reserved = harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="res-1"),
        producer="inventory",
        step="reserve_stock",
    )
    processed = harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="pay-1", amount=order.total(), currency="EUR"),
        producer="payment",
        step="charge_payment",
    )
    return harness.event_after(
        processed,
        ShipmentCreated(order=order, shipment_id="shp-1", tracking_number="SK1"),
        producer="shipping",
        step="ship_order",
    )


def cancelled_event(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """order.cancelled of a saga whose first step failed, as inventory would emit it."""
    created = harness.start_saga(order)
    failed = harness.event_after(
        created,
        InventoryReservationFailed(order=order, reason="insufficient_stock"),
        producer="inventory",
        step="reserve_stock",
        outcome=StepOutcome.FAILED,
        reason="insufficient_stock",
    )
    return harness.event_after(
        failed,
        OrderCancelled(order=order, failed_step="reserve_stock", reason="insufficient_stock"),
        producer="inventory",
    )


def emitted_by_notification(harness: ParticipantHarness) -> list[str]:
    return [e.event_type for e in harness.emitted if e.producer == "notification"]


def test_it_consumes_its_step_and_the_cancellation_only(harness: ParticipantHarness) -> None:
    # confirm_order is the last step: nothing after it can fail, so it has no compensation.
    kinds = {(s.event_type, s.kind.value) for s in harness.service.runtime.subscriptions}
    assert kinds == {("shipment.created", "step"), ("order.cancelled", "reaction")}


async def test_shipment_created_confirms_the_order(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    shipped = shipped_event(harness, order)

    await harness.publish(shipped)

    [fulfilled] = check_wire(
        harness.emitted, ["order.fulfilled"], producer="notification", cause=shipped, order=order
    )
    assert isinstance(fulfilled.payload, OrderFulfilled)
    record = fulfilled.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "confirm_order",
        "notification",
        StepOutcome.COMPLETED,
    )
    assert fulfilled.context.completed_steps() == (
        "reserve_stock",
        "charge_payment",
        "ship_order",
        "confirm_order",
    )
    [notice] = await notices(harness.service)
    assert notice.notice_id == fulfilled.payload.notification_id
    assert notice.saga_id == str(shipped.context.saga_id)
    assert (notice.order_id, notice.kind, notice.recipient, notice.status) == (
        order.order_id,
        "confirmation",
        "ada@example.com",
        "sent",
    )


@pytest.mark.parametrize("email", ["ada@mailhost.invalid", "ada@Deep.Sub.INVALID", "ada@invalid"])
async def test_an_unreachable_contact_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck, email: str
) -> None:
    order = with_email(email)
    shipped = shipped_event(harness, order)

    await harness.publish(shipped)

    [failed] = check_wire(
        harness.emitted,
        ["notification.failed"],
        producer="notification",
        cause=shipped,
        order=order,
    )
    assert isinstance(failed.payload, NotificationFailed)
    assert failed.payload.reason == "contact_unreachable"
    assert email not in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.participant, record.outcome, record.reason) == (
        "confirm_order",
        "notification",
        StepOutcome.FAILED,
        "contact_unreachable",
    )
    assert await notices(harness.service) == []


async def test_the_sample_unreachable_order_fails(harness: ParticipantHarness) -> None:
    await harness.publish(shipped_event(harness, sample_order(Scenario.UNREACHABLE)))

    assert harness.emitted_types == ["notification.failed"]


async def test_order_cancelled_records_one_cancellation_notice(
    harness: ParticipantHarness,
) -> None:
    order = sample_order(Scenario.OUT_OF_STOCK)
    cancelled = cancelled_event(harness, order)

    await harness.publish(cancelled)

    # A reaction emits nothing; the notice is its only effect.
    assert emitted_by_notification(harness) == []
    [notice] = await notices(harness.service)
    assert notice.saga_id == str(cancelled.context.saga_id)
    assert (notice.order_id, notice.kind, notice.recipient, notice.status) == (
        order.order_id,
        "cancellation",
        order.customer.email,
        "sent",
    )


async def test_a_cancellation_to_an_unreachable_contact_is_undeliverable(
    harness: ParticipantHarness,
) -> None:
    order = sample_order(Scenario.UNREACHABLE)
    shipped = shipped_event(harness, order)
    await harness.publish(shipped)
    [failed] = harness.emitted
    # The backward path runs through shipping, payment and inventory; inventory ends it.
    cancelled = harness.event_after(
        failed,
        OrderCancelled(order=order, failed_step="confirm_order", reason="contact_unreachable"),
        producer="inventory",
    )

    await harness.publish(cancelled)

    assert emitted_by_notification(harness) == ["notification.failed"]
    [notice] = await notices(harness.service)
    assert (notice.kind, notice.status) == ("cancellation", "undeliverable")


async def test_a_second_order_cancelled_for_the_saga_is_a_no_op(
    harness: ParticipantHarness, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled = cancelled_event(harness, sample_order())
    await harness.publish(cancelled)
    [notice] = await notices(harness.service)
    # Another event id for the same saga: the inbox does not know it, the table does.
    again = Envelope.new(cancelled.payload, context=cancelled.context, producer="inventory")

    with caplog.at_level(logging.INFO):
        await harness.publish(again)

    [unchanged] = await notices(harness.service)
    assert (unchanged.notice_id, unchanged.created_at) == (notice.notice_id, notice.created_at)
    # Handled as a no-op, not as a failure that is retried (the unique constraint's job).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert harness.parked == []


async def test_unreachable_domains_come_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFICATION_UNREACHABLE_DOMAINS", json.dumps(["example.com"]))
    service = create_service(NotificationSettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        await harness.publish(shipped_event(harness, sample_order()))
        await harness.publish(shipped_event(harness, sample_order(Scenario.UNREACHABLE)))

        assert harness.emitted_types == ["notification.failed", "order.fulfilled"]


class TestNotificationKeepsTheSagaRules(ParticipantConformance):
    spec = ORDER_SAGA
    participant = "notification"

    def create_service(self, database_url: str) -> SagaService:
        return create_service(NotificationSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_order()

    def sample_payloads(self) -> list[EventPayload]:
        return [sample_order(), sample_order(Scenario.UNREACHABLE)]

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, OrderCreated)
        return [
            start.customer.email,
            start.customer.email.split("@")[1],
            start.payment_method,
            start.shipping_address.name,
            start.shipping_address.line1,
        ]
