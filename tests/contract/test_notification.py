"""Contract of the notification participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_notification.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from notification_service.main import create_service
from notification_service.settings import NotificationSettings
from notification_service.tables import Notice
from order_contracts import (
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
from sagakit import Envelope, SagaService, StepOutcome, utc_now
from sagakit.testing import ParticipantHarness
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


async def test_a_duplicate_shipment_created_confirms_once(harness: ParticipantHarness) -> None:
    shipped = shipped_event(harness, sample_order())

    await harness.publish(shipped)
    await harness.publish(shipped)

    assert harness.emitted_types == ["order.fulfilled"]
    assert len(await notices(harness.service)) == 1


async def test_a_duplicate_order_cancelled_records_one_notice(
    harness: ParticipantHarness,
) -> None:
    cancelled = cancelled_event(harness, sample_order())

    await harness.publish(cancelled)
    await harness.publish(cancelled)

    assert len(await notices(harness.service)) == 1


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


async def test_a_second_shipment_created_for_the_saga_does_not_confirm_again(
    harness: ParticipantHarness,
) -> None:
    shipped = shipped_event(harness, sample_order())
    await harness.publish(shipped)
    again = Envelope.new(shipped.payload, context=shipped.context, producer="shipping")

    await harness.publish(again)

    assert harness.emitted_types == ["order.fulfilled"]
    assert len(await notices(harness.service)) == 1


async def test_a_past_deadline_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    shipped = shipped_event(harness, order, deadline=utc_now() - timedelta(seconds=1))

    await harness.publish(shipped)

    [failed] = check_wire(
        harness.emitted,
        ["notification.failed"],
        producer="notification",
        cause=shipped,
        order=order,
    )
    assert failed.payload.reason == "deadline_exceeded"
    assert await notices(harness.service) == []


async def test_shipment_created_after_the_step_failed_does_not_confirm(
    harness: ParticipantHarness,
) -> None:
    shipped = shipped_event(harness, sample_order(), deadline=utc_now() - timedelta(seconds=1))
    await harness.publish(shipped)
    # The same saga's forward event again, now without a deadline that could fail it.
    late = Envelope.new(
        shipped.payload,
        context=shipped.context.model_copy(update={"deadline": None}),
        producer="shipping",
    )

    await harness.publish(late)

    assert harness.emitted_types == ["notification.failed"]
    assert await notices(harness.service) == []


def _mangled(event: Envelope[Any], how: str) -> bytes:
    body = json.loads(event.encode())
    if how == "not_json":
        return b""
    if how == "schema_invalid":
        body["payload"]["order"]["customer"]["email"] = "no-at-sign"
    elif how == "schema_version":
        body["schema_version"] = 2
    elif how == "saga_type":
        body["context"]["saga_type"] = "returns"
    return json.dumps(body).encode()


BAD_INPUT = [
    ("not_json", "undecodable"),
    ("schema_invalid", "schema_invalid"),
    ("schema_version", "unsupported_schema_version"),
    ("saga_type", "unknown_saga_type"),
]


@pytest.mark.parametrize(("how", "reason"), BAD_INPUT)
async def test_a_bad_shipment_created_is_parked_with_its_reason(
    harness: ParticipantHarness, how: str, reason: str
) -> None:
    shipped = shipped_event(harness, sample_order())

    await harness.publish_raw(_mangled(shipped, how), routing_key="shipment.created")

    [parked] = harness.parked
    assert parked.reason.startswith(reason)
    assert parked.headers["x-saga-origin-queue"] == "notification.shipment.created"
    assert emitted_by_notification(harness) == []
    assert await notices(harness.service) == []
    # The consumer lives on: the next valid event is served.
    await harness.publish(shipped)
    assert emitted_by_notification(harness) == ["order.fulfilled"]


@pytest.mark.parametrize(("how", "reason"), BAD_INPUT)
async def test_a_bad_order_cancelled_is_parked_with_its_reason(
    harness: ParticipantHarness, how: str, reason: str
) -> None:
    cancelled = cancelled_event(harness, sample_order())

    await harness.publish_raw(_mangled(cancelled, how), routing_key="order.cancelled")

    [parked] = harness.parked
    assert parked.reason.startswith(reason)
    assert parked.headers["x-saga-origin-queue"] == "notification.order.cancelled"
    assert await notices(harness.service) == []
    await harness.publish(cancelled)
    assert len(await notices(harness.service)) == 1


async def test_unreachable_domains_come_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFICATION_UNREACHABLE_DOMAINS", json.dumps(["example.com"]))
    service = create_service(NotificationSettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        await harness.publish(shipped_event(harness, sample_order()))
        await harness.publish(shipped_event(harness, sample_order(Scenario.UNREACHABLE)))

        assert harness.emitted_types == ["notification.failed", "order.fulfilled"]


async def test_no_personal_data_in_logs(
    harness: ParticipantHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # The service's own loggers at their most talkative, everything else at the default level.
    caplog.set_level(logging.INFO)
    for name in ("sagakit", "notification_service"):
        caplog.set_level(logging.DEBUG, logger=name)
    order = sample_order()
    unreachable = sample_order(Scenario.UNREACHABLE)
    await harness.publish(shipped_event(harness, order))
    await harness.publish(shipped_event(harness, unreachable))
    await harness.publish(cancelled_event(harness, unreachable))

    assert harness.emitted_types == ["order.fulfilled", "notification.failed"]
    assert len(await notices(harness.service)) == 2
    assert any("cancellation notice recorded" in r.getMessage() for r in caplog.records)
    personal = (
        order.customer.email,
        unreachable.customer.email,
        "mailhost.invalid",
        order.payment_method,
        order.shipping_address.name,
        order.shipping_address.line1,
    )
    for record in caplog.records:
        line = record.getMessage()
        assert not any(value in line for value in personal), line
