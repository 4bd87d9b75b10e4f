"""What the dead-letter tool reads from a parked message, and what it shows of it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from order_contracts.events import InventoryReserved
from order_contracts.samples import sample_order
from sagakit import Envelope, SagaContext
from sagakit.client import Selection
from sagakit.client._dead_letters import death_history, read_parked
from sagakit.client._redaction import REDACTED, redact_text, redacted_body

SAGA = SagaContext.start("order_fulfilment")
EARLY = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
LATE = datetime(2026, 11, 24, 10, 5, 0, tzinfo=UTC)


def _body(event_type: str = "payment.failed", saga: SagaContext = SAGA) -> bytes:
    return json.dumps(
        {"event_type": event_type, "context": {"saga_id": str(saga.saga_id)}, "payload": {}}
    ).encode()


def _death(queue: str, reason: str, count: int, time: datetime) -> dict[str, Any]:
    return {
        "queue": queue,
        "reason": reason,
        "count": count,
        "exchange": "inventory.retries",
        "routing-keys": [queue],
        "time": time,
    }


def test_a_message_sagakit_parked_carries_its_reason_and_origin() -> None:
    entry = read_parked(
        "inventory",
        body=_body(),
        headers={
            "x-saga-dead-letter-reason": "compensation_failed: TransientError: down",
            "x-saga-origin-queue": "inventory.payment.failed",
            "x-saga-parked-at": LATE.isoformat(),
            "x-saga-first-failure-at": EARLY.isoformat(),
            "x-death": [_death("inventory.payment.failed.retry", "expired", 8, LATE)],
            "x-first-death-queue": "inventory.payment.failed.retry",
            "x-first-death-reason": "expired",
        },
        message_id="m1",
        routing_key="inventory.payment.failed",
    )
    assert (entry.parked_by, entry.reason_code, entry.broker_reason) == (
        "sagakit",
        "compensation_failed",
        "",
    )
    assert entry.origin_queue == "inventory.payment.failed"
    assert entry.first_failure_at == EARLY.isoformat()
    assert entry.saga_id == str(SAGA.saga_id)
    assert entry.event_type == "payment.failed"


def test_the_broker_dead_lettering_after_retries_names_the_work_queue_not_the_delay_queue() -> None:
    # What RabbitMQ writes when the quorum queue's delivery limit dead-letters a message
    # that passed through the delay queue before: x-first-death-* name the delay queue.
    entry = read_parked(
        "inventory",
        body=_body(),
        headers={
            "x-death": [
                _death("inventory.payment.failed", "delivery_limit", 1, LATE),
                _death("inventory.payment.failed.retry", "expired", 3, EARLY),
            ],
            "x-first-death-queue": "inventory.payment.failed.retry",
            "x-first-death-reason": "expired",
            "x-saga-first-failure-at": EARLY.isoformat(),
            "x-saga-attempt": 3,
        },
        message_id="m2",
        routing_key="inventory.payment.failed",
    )
    assert (entry.parked_by, entry.broker_reason) == ("broker", "delivery_limit")
    assert entry.reason == "delivery_limit: dead-lettered by the broker after 3 retries"
    assert entry.origin_queue == "inventory.payment.failed"
    assert entry.first_failure_at == EARLY.isoformat()
    assert [d.queue for d in entry.deaths] == [
        "inventory.payment.failed",
        "inventory.payment.failed.retry",
    ]


@pytest.mark.parametrize("reason", ["delivery_limit", "rejected", "expired", "maxlen"])
def test_the_brokers_own_reason_is_reported(reason: str) -> None:
    entry = read_parked(
        "payment",
        body=_body("inventory.reserved"),
        headers={"x-death": [_death("payment.inventory.reserved", reason, 1, LATE)]},
    )
    assert entry.broker_reason == reason
    assert entry.reason_code == reason
    assert entry.origin_queue == "payment.inventory.reserved"
    assert entry.first_failure_at == LATE.isoformat()  # never republished: the death's time


def test_a_forged_or_broken_death_history_is_not_believed_blindly() -> None:
    assert death_history({"x-death": "not a list"}) == ()
    assert death_history({"x-death": [1, {"reason": "x"}]}) == ()
    [fallback] = death_history(
        {"x-death": None, "x-first-death-queue": b"q", "x-first-death-reason": "rejected"}
    )
    assert (fallback.queue, fallback.reason) == ("q", "rejected")


def test_the_saga_id_and_event_type_come_from_the_envelope_before_the_properties() -> None:
    other = SagaContext.start("order_fulfilment")
    entry = read_parked(
        "inventory",
        body=_body("order.created", other),
        headers={"x-saga-id": str(SAGA.saga_id)},
        correlation_id="client-correlation-17",
        message_type="something.else",
    )
    assert entry.saga_id == str(other.saga_id)
    assert entry.event_type == "order.created"

    not_json = read_parked(
        "inventory",
        body=b"\x00 garbage",
        headers={"x-saga-id": str(SAGA.saga_id)},
        correlation_id="client-correlation-17",
        routing_key="inventory.order.created",
        message_id=None,
    )
    assert not_json.saga_id == str(SAGA.saga_id)
    assert not_json.event_type == "order.created"  # from the queue it was parked from
    assert len(not_json.id) == 16  # the body's hash stands in for a missing message id

    bare = read_parked(
        "inventory",
        body=b"{}",
        headers={"x-saga-dead-letter-reason": "x", "x-saga-parked-at": "t"},
        correlation_id="line\nbreak",
        routing_key="inventory.order.created",
    )
    assert bare.saga_id == ""  # not an identifier: never shown as a saga id
    assert bare.event_type == "order.created"  # from the origin queue


def test_selections_filter_by_id_reason_saga_and_event_type() -> None:
    entry = read_parked(
        "alpha",
        body=_body("beta.failed"),
        headers={
            "x-saga-dead-letter-reason": "schema_invalid: x; headers_too_large: 9 headers dropped",
            "x-saga-parked-at": "t",
            "x-saga-origin-queue": "alpha.beta.failed",
        },
        message_id="m",
    )
    assert entry.reason_codes == {"schema_invalid", "headers_too_large"}
    assert Selection().matches(entry)
    assert Selection().is_everything
    assert Selection(reason="headers_too_large").matches(entry)
    assert Selection(reason="schema_invalid: x").matches(entry)
    assert not Selection(reason="delivery_limit").matches(entry)
    assert Selection(ids=frozenset({"m"}), saga_id=str(SAGA.saga_id)).matches(entry)
    assert not Selection(ids=frozenset({"n"})).matches(entry)
    assert not Selection(event_type="alpha.done").matches(entry)
    assert not Selection(saga_id=str(uuid.uuid4())).matches(entry)


def test_personal_data_is_masked_unless_asked_for() -> None:
    order = sample_order()
    envelope = Envelope.new(order, context=SAGA, producer="test")
    body = envelope.encode()
    personal = (
        order.customer.email,
        order.payment_method,
        order.shipping_address.name,
        order.shipping_address.line1,
        order.shipping_address.postal_code,
    )
    shown = redacted_body(body)
    assert not any(value in shown for value in personal), shown
    assert REDACTED in shown
    assert order.order_id in shown  # identifiers stay
    assert str(SAGA.saga_id) in shown
    assert all(value in redacted_body(body, show_personal_data=True) for value in personal)

    truncated = body[: len(body) - 40]  # not JSON any more
    masked = redacted_body(truncated)
    assert not any(value in masked for value in personal), masked


def test_text_redaction_masks_fields_and_addresses_anywhere() -> None:
    text = '{"note": "mail bob@example.org", "payment_method": "tok_visa", "customer": {"em'
    masked = redact_text(text)
    assert "bob@example.org" not in masked
    assert "tok_visa" not in masked


def test_the_order_carried_by_later_events_is_masked_too() -> None:
    order = sample_order()
    reserved = InventoryReserved(order=order, reservation_id="r-1")
    shown = redacted_body(Envelope.new(reserved, context=SAGA, producer="inventory").encode())
    for value in (order.customer.email, order.payment_method, order.shipping_address.city):
        assert value not in shown
    assert "r-1" in shown
