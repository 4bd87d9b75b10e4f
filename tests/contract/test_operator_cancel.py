"""An operator's cancel, as the participant takes it: a copy of the step's trigger marked
``x-saga-operator-cancel`` fails the step with ``cancelled_by_operator`` (the participant's
own failure, so every rule holds), and the original trigger arriving later changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from order_contracts import InventoryReserved
from order_contracts.samples import Scenario, sample_order
from payment_service.main import create_service
from payment_service.settings import PaymentSettings
from payment_service.tables import Payment
from sagakit import Envelope
from sagakit.broker import CANCELLED_BY_OPERATOR, OPERATOR_CANCEL_HEADER
from sagakit.testing import ParticipantHarness
from sqlalchemy import select


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(PaymentSettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


def _reserved(harness: ParticipantHarness) -> Envelope[Any]:
    order = sample_order(Scenario.FULFILLED)
    created = harness.start_saga(order)
    return harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="res-1"),
        producer="inventory",
        step="reserve_stock",
    )


async def _payments(harness: ParticipantHarness) -> list[Payment]:
    async with harness.service.store.read() as session:
        return list((await session.execute(select(Payment))).scalars())


async def _publish(
    harness: ParticipantHarness, event: Envelope[Any], headers: dict[str, str]
) -> None:
    await harness.publish_raw(
        event.encode(),
        routing_key=event.event_type,
        headers={**event.amqp_headers(), **headers},
    )


def _payment_events(harness: ParticipantHarness) -> list[Envelope[Any]]:
    # publish_raw's copies are recorded too: only what payment announced counts here.
    return [event for event in harness.emitted if event.producer == "payment"]


async def test_a_cancel_copy_fails_the_step_and_the_original_is_a_duplicate(
    harness: ParticipantHarness,
) -> None:
    reserved = _reserved(harness)
    await _publish(harness, reserved, {OPERATOR_CANCEL_HEADER: CANCELLED_BY_OPERATOR})
    assert [e.event_type for e in _payment_events(harness)] == ["payment.failed"]
    failed = _payment_events(harness)[-1]
    assert failed.payload.reason == CANCELLED_BY_OPERATOR
    assert failed.context.causation_id == reserved.event_id
    assert await _payments(harness) == []  # nothing was charged
    # The original event, delivered late (a replay from the dead-letter queue, say), and a
    # second cancel: duplicates, nothing charged, nothing announced again.
    await harness.publish(reserved)
    await _publish(harness, reserved, {OPERATOR_CANCEL_HEADER: CANCELLED_BY_OPERATOR})
    assert [e.event_type for e in _payment_events(harness)] == ["payment.failed"]
    assert await _payments(harness) == []


async def test_a_cancel_after_the_step_was_done_changes_nothing(
    harness: ParticipantHarness,
) -> None:
    reserved = _reserved(harness)
    await harness.publish(reserved)
    assert harness.emitted_types == ["payment.processed"]
    await _publish(harness, reserved, {OPERATOR_CANCEL_HEADER: CANCELLED_BY_OPERATOR})
    assert [e.event_type for e in _payment_events(harness)] == ["payment.processed"]
    assert len(await _payments(harness)) == 1
