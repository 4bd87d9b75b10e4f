"""The tracker's read model as pure functions: states, steps, stuck detection, decoding."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from order_contracts import ORDER_SAGA
from sagakit import InvalidMessage
from sagakit.tracker import SagaState, TrackedEvent, decode_event, summarize
from sagakit.tracker._model import stuck_reason, trace_id_from

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SAGA = str(uuid.uuid4())
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

# (event type, producer, reason, failed step) in the order a saga produces them.
FULFILLED = [
    ("order.created", "client", None, None),
    ("inventory.reserved", "inventory", None, None),
    ("payment.processed", "payment", None, None),
    ("shipment.created", "shipping", None, None),
    ("order.fulfilled", "notification", None, None),
]
FAILED_AT_SHIPPING = [
    ("order.created", "client", None, None),
    ("inventory.reserved", "inventory", None, None),
    ("payment.processed", "payment", None, None),
    ("shipment.failed", "shipping", "destination_not_served", None),
    ("payment.refunded", "payment", None, None),
    ("inventory.released", "inventory", None, None),
    ("order.cancelled", "inventory", "destination_not_served", "ship_order"),
]


def events(
    script: Sequence[tuple[str, str, str | None, str | None]],
    *,
    traced_from: int = 0,
    deadline: datetime | None = None,
) -> list[TrackedEvent]:
    return [
        TrackedEvent(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SAGA}/{event_type}")),
            event_type=event_type,
            producer=producer,
            occurred_at=T0 + timedelta(milliseconds=100 * n),
            saga_id=SAGA,
            saga_type="order_fulfilment",
            deadline=deadline,
            reason=reason,
            failed_step=failed_step,
            trace_id=TRACE if n >= traced_from else None,
        )
        for n, (event_type, producer, reason, failed_step) in enumerate(script)
    ]


@pytest.mark.parametrize(
    ("seen", "state"),
    [
        (1, SagaState.STARTED),
        (2, SagaState.PENDING),
        (4, SagaState.PENDING),
        (5, SagaState.COMPLETED),
    ],
)
def test_states_of_a_saga_going_forward(seen: int, state: SagaState) -> None:
    assert summarize(ORDER_SAGA, events(FULFILLED)[:seen]).state is state


@pytest.mark.parametrize(
    ("seen", "state"),
    [
        (3, SagaState.PENDING),
        (4, SagaState.COMPENSATING),  # the failure event
        (6, SagaState.COMPENSATING),  # compensated events, no terminal yet
        (7, SagaState.FAILED),
    ],
)
def test_states_of_a_saga_going_backward(seen: int, state: SagaState) -> None:
    assert summarize(ORDER_SAGA, events(FAILED_AT_SHIPPING)[:seen]).state is state


def test_a_compensated_event_alone_means_compensating() -> None:
    [released] = [e for e in events(FAILED_AT_SHIPPING) if e.event_type == "inventory.released"]
    assert summarize(ORDER_SAGA, [released]).state is SagaState.COMPENSATING


def test_the_view_of_a_failed_saga() -> None:
    view = summarize(ORDER_SAGA, events(FAILED_AT_SHIPPING, traced_from=1))
    assert view.saga_id == SAGA
    assert view.failed_step == "ship_order"
    assert view.failure_reason == "destination_not_served"
    assert view.started_at == T0
    assert view.ended_at == T0 + timedelta(milliseconds=600)
    assert (view.last_event_type, view.event_count) == ("order.cancelled", 7)
    assert view.trace_id == TRACE
    outcomes = {s.step: s.outcome for s in view.steps}
    assert outcomes == {
        "reserve_stock": "compensated",
        "charge_payment": "compensated",
        "ship_order": "failed",
        "confirm_order": None,
    }
    charge = next(s for s in view.steps if s.step == "charge_payment")
    assert charge.participant == "payment"
    assert charge.completed_at == T0 + timedelta(milliseconds=200)
    assert charge.compensated_at == T0 + timedelta(milliseconds=400)
    ship = next(s for s in view.steps if s.step == "ship_order")
    assert (ship.failed_at, ship.reason) == (
        T0 + timedelta(milliseconds=300),
        "destination_not_served",
    )


def test_without_the_start_event_a_saga_is_dated_from_its_first_event() -> None:
    view = summarize(ORDER_SAGA, events(FULFILLED)[1:])
    assert view.started_at == T0 + timedelta(milliseconds=100)
    assert view.state is SagaState.COMPLETED


def test_events_of_several_sagas_are_refused() -> None:
    one, two = events(FULFILLED)[:2]
    with pytest.raises(ValueError, match="several sagas"):
        summarize(ORDER_SAGA, [one, replace(two, saga_id=str(uuid.uuid4()))])


@given(st.permutations(events(FAILED_AT_SHIPPING, traced_from=2)))
def test_the_view_does_not_depend_on_arrival_order(shuffled: list[TrackedEvent]) -> None:
    assert summarize(ORDER_SAGA, shuffled) == summarize(
        ORDER_SAGA, events(FAILED_AT_SHIPPING, traced_from=2)
    )


@given(st.sets(st.sampled_from(range(len(FAILED_AT_SHIPPING))), min_size=1))
def test_any_subset_of_events_gives_the_state_the_definitions_say(seen: set[int]) -> None:
    chosen = [e for n, e in enumerate(events(FAILED_AT_SHIPPING)) if n in seen]
    types = {e.event_type for e in chosen}
    if "order.cancelled" in types:
        expected = SagaState.FAILED
    elif types & {"shipment.failed", "payment.refunded", "inventory.released"}:
        expected = SagaState.COMPENSATING
    elif types & {"inventory.reserved", "payment.processed"}:
        expected = SagaState.PENDING
    else:
        expected = SagaState.STARTED
    assert summarize(ORDER_SAGA, chosen).state is expected


def test_stuck_when_idle_too_long_or_past_the_deadline_and_never_once_ended() -> None:
    idle = timedelta(seconds=60)
    last = T0
    assert (
        stuck_reason(
            state=SagaState.PENDING,
            last_event_at=last,
            deadline=None,
            now=T0 + idle,
            stuck_after=idle,
        )
        is None
    )
    assert (
        stuck_reason(
            state=SagaState.PENDING,
            last_event_at=last,
            deadline=None,
            now=T0 + idle + timedelta(seconds=1),
            stuck_after=idle,
        )
        == "no event for 61s"
    )
    past = stuck_reason(
        state=SagaState.STARTED,
        last_event_at=last,
        deadline=T0 + timedelta(seconds=5),
        now=T0 + timedelta(seconds=6),
        stuck_after=idle,
    )
    assert past is not None
    assert past.startswith("past its deadline")
    for ended in (SagaState.COMPLETED, SagaState.FAILED):
        assert (
            stuck_reason(
                state=ended,
                last_event_at=last,
                deadline=T0,
                now=T0 + timedelta(days=1),
                stuck_after=idle,
            )
            is None
        )


def test_a_view_knows_its_deadline() -> None:
    deadline = T0 + timedelta(seconds=1)
    view = summarize(ORDER_SAGA, events(FULFILLED, deadline=deadline)[:2])
    assert view.deadline == deadline
    assert view.stuck_reason(now=T0 + timedelta(seconds=2), stuck_after=timedelta(hours=1))


def _wire(**changes: object) -> bytes:
    body: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "payment.failed",
        "schema_version": 1,
        "occurred_at": "2026-11-01T13:00:00+01:00",
        "producer": "payment",
        "context": {
            "saga_id": SAGA,
            "saga_type": "order_fulfilment",
            "causation_id": None,
            "deadline": None,
            "steps": [],
        },
        "payload": {
            "reason": "card_declined",
            "detail": "the payment method was declined",
            "order": {"customer": {"email": "ada@example.com"}},
        },
    }
    body.update(changes)
    return json.dumps(body).encode()


def test_decoding_keeps_identity_timing_and_reason_codes_only() -> None:
    event = decode_event(_wire(), {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert event.event_type == "payment.failed"
    assert event.saga_id == SAGA
    assert event.occurred_at == T0  # normalised to UTC
    assert event.reason == "card_declined"
    assert event.trace_id == TRACE
    assert "ada@example.com" not in repr(event)  # the payload's personal data is not kept


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", _wire(context={"saga_id": "not-a-uuid"}), _wire(occurred_at="yesterday")],
)
def test_what_is_not_an_envelope_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidMessage, match="not an event envelope"):
        decode_event(body, {})


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE}-00f067aa0ba902b7-01".encode(), TRACE),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_trace_id_from_traceparent(header: object, trace_id: str | None) -> None:
    assert trace_id_from({"traceparent": header} if header is not None else {}) == trace_id


def test_the_two_ends_are_called_fulfilled_and_cancelled_everywhere() -> None:
    assert [state.value for state in SagaState] == [
        "started",
        "pending",
        "compensating",
        "fulfilled",
        "cancelled",
    ]
    assert summarize(ORDER_SAGA, events(FULFILLED)).state.value == "fulfilled"
    assert summarize(ORDER_SAGA, events(FAILED_AT_SHIPPING)).state.value == "cancelled"
    # rows written with the former words still read
    assert SagaState("failed") is SagaState.CANCELLED
    assert SagaState("completed") is SagaState.FULFILLED


def test_a_start_event_repeated_after_the_end_is_not_the_last_event() -> None:
    timeline = events(FULFILLED)
    repeated = replace(
        timeline[0],
        event_id=str(uuid.uuid4()),
        occurred_at=timeline[-1].occurred_at + timedelta(seconds=5),
    )
    view = summarize(ORDER_SAGA, [*timeline, repeated])
    assert view.state is SagaState.FULFILLED
    assert view.last_event_type == "order.fulfilled"
    assert view.last_event_at == timeline[-1].occurred_at
    assert view.event_count == 6


def test_a_start_event_repeated_mid_saga_keeps_the_last_step_event() -> None:
    timeline = events(FULFILLED)[:3]
    repeated = replace(timeline[0], event_id=str(uuid.uuid4()))
    view = summarize(ORDER_SAGA, [*timeline, repeated])
    assert view.last_event_type == "payment.processed"
