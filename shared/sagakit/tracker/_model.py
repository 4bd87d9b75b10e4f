"""The saga tracker's read model, as pure functions of the events seen.

A saga's view is computed from the *set* of its events, never from the order they arrived
in, so that redelivery, concurrent consumers and a rebuild from the outboxes all give the
same answer. States:

- ``started``: only the flow's start event has been seen.
- ``pending``: some step succeeded, and nothing failed or was compensated (in progress).
- ``compensating``: a step's failure event or a compensated event was seen, and no terminal.
- ``completed``: the flow's completed event (``order.fulfilled``) was seen.
- ``failed``: the flow's cancelled event (``order.cancelled``) was seen; the saga ended with
  every completed step undone.

A saga is *stuck* when it has not ended and either no event of it occurred for the stuck
threshold, or its deadline has passed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from sagakit._context import SagaContext
from sagakit._exceptions import InvalidMessage
from sagakit.spec._spec import SagaSpec


class SagaState(StrEnum):
    """Where a saga stands, as far as the tracker has seen.

    The words of the two ends are the ones every command, metric and document uses:
    ``fulfilled`` (the flow's completed event) and ``cancelled`` (its cancelled event).
    ``COMPLETED`` and ``FAILED`` are the same members under their former names, and the
    former words ``completed`` and ``failed`` still read as them (databases written before).
    """

    STARTED = "started"
    PENDING = "pending"
    COMPENSATING = "compensating"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    COMPLETED = "fulfilled"
    FAILED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> SagaState | None:
        return {"completed": cls.FULFILLED, "failed": cls.CANCELLED}.get(str(value))

    @property
    def ended(self) -> bool:
        """True for the terminal states."""
        return self in {SagaState.FULFILLED, SagaState.CANCELLED}


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """What the tracker keeps of one event: identity, timing, causation and the message.

    ``reason`` and ``failed_step`` are the reason codes of failure and cancellation events.
    ``body`` and ``headers`` are the message as it travelled, kept so that an operator can
    send it again (``saga redrive``); pages show the body only with personal data masked.
    """

    event_id: str
    event_type: str
    producer: str
    occurred_at: datetime
    saga_id: str
    saga_type: str
    deadline: datetime | None = None
    reason: str | None = None
    failed_step: str | None = None
    trace_id: str | None = None
    causation_id: str | None = None
    business_key: str | None = None
    body: bytes | None = field(default=None, repr=False, compare=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a saga: how far it got, and when."""

    step: str
    participant: str
    outcome: str | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    compensated_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SagaView:
    """The read model of one saga."""

    saga_id: str
    saga_type: str
    state: SagaState
    started_at: datetime
    last_event_type: str
    last_event_at: datetime
    event_count: int
    steps: tuple[StepView, ...]
    deadline: datetime | None = None
    ended_at: datetime | None = None
    trace_id: str | None = None
    failed_step: str | None = None
    failure_reason: str | None = None
    current_step: str | None = None
    business_key: str | None = None

    def stuck_reason(self, *, now: datetime, stuck_after: timedelta) -> str | None:
        """Why the saga counts as stuck at ``now``, or None if it does not."""
        return stuck_reason(
            state=self.state,
            last_event_at=self.last_event_at,
            deadline=self.deadline,
            now=now,
            stuck_after=stuck_after,
        )


def stuck_reason(
    *,
    state: SagaState,
    last_event_at: datetime,
    deadline: datetime | None,
    now: datetime,
    stuck_after: timedelta,
) -> str | None:
    """Why a saga in ``state`` counts as stuck at ``now``, or None if it does not."""
    if state.ended:
        return None
    if deadline is not None and now > deadline:
        return f"past its deadline ({deadline.isoformat()})"
    idle = now - last_event_at
    if idle > stuck_after:
        return f"no event for {int(idle.total_seconds())}s"
    return None


class _Role(StrEnum):
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    COMPENSATED = "compensated"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


def _roles(spec: SagaSpec) -> dict[str, list[tuple[_Role, str | None]]]:
    roles: dict[str, list[tuple[_Role, str | None]]] = {}

    def add(event_type: str, role: _Role, step: str | None) -> None:
        roles.setdefault(event_type, []).append((role, step))

    add(spec.start_event, _Role.START, None)
    add(spec.completed_event, _Role.COMPLETED, None)
    add(spec.cancelled_event, _Role.CANCELLED, None)
    for step in spec.steps:
        add(step.success, _Role.SUCCESS, step.name)
        add(step.failure, _Role.FAILURE, step.name)
        if step.compensated is not None:
            add(step.compensated, _Role.COMPENSATED, step.name)
    return roles


def summarize(spec: SagaSpec, events: Iterable[TrackedEvent]) -> SagaView:
    """The view of one saga from its events, whatever order they are given in.

    Raises:
        ValueError: ``events`` is empty or spans several sagas.
    """
    timeline = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    if not timeline:
        raise ValueError("a saga view needs at least one event")
    saga_ids = {e.saga_id for e in timeline}
    if len(saga_ids) != 1:
        raise ValueError(f"events of several sagas: {sorted(saga_ids)}")
    roles = _roles(spec)
    seen: set[_Role] = set()
    steps: dict[str, dict[str, Any]] = {s.name: {} for s in spec.steps}
    start_at: datetime | None = None
    ended_at: datetime | None = None
    failed_step: str | None = None
    failure_reason: str | None = None
    terminal: TrackedEvent | None = None
    moved: TrackedEvent | None = None
    for event in timeline:
        event_roles = roles.get(event.event_type, ())
        if not any(role is _Role.START for role, _ in event_roles):
            moved = event
        for role, step in event_roles:
            seen.add(role)
            if role is _Role.START:
                start_at = start_at or event.occurred_at
            elif role is _Role.SUCCESS and step is not None:
                steps[step].setdefault("completed_at", event.occurred_at)
            elif role is _Role.FAILURE and step is not None:
                steps[step].setdefault("failed_at", event.occurred_at)
                steps[step].setdefault("reason", event.reason)
                failed_step = failed_step or step
                failure_reason = failure_reason or event.reason
            elif role is _Role.COMPENSATED and step is not None:
                steps[step].setdefault("compensated_at", event.occurred_at)
            elif role in {_Role.COMPLETED, _Role.CANCELLED}:
                ended_at = ended_at or event.occurred_at
                terminal = terminal or event
                if role is _Role.CANCELLED:
                    # The cancellation names the failed step: the most reliable source.
                    failed_step = event.failed_step or failed_step
                    failure_reason = event.reason or failure_reason
    # A start event repeated late (a republished order) says nothing new: the last event is
    # the terminal one once the saga ended, else the latest that is not a start.
    last = terminal or moved or timeline[-1]
    state = _state(seen)
    return SagaView(
        saga_id=last.saga_id,
        saga_type=last.saga_type,
        state=state,
        started_at=start_at or timeline[0].occurred_at,
        last_event_type=last.event_type,
        last_event_at=last.occurred_at,
        event_count=len(timeline),
        steps=tuple(
            _step_view(spec_step.name, spec_step.participant, steps[spec_step.name])
            for spec_step in spec.steps
        ),
        deadline=next((e.deadline for e in timeline if e.deadline is not None), None),
        ended_at=ended_at,
        trace_id=next((e.trace_id for e in timeline if e.trace_id), None),
        failed_step=failed_step,
        failure_reason=failure_reason,
        current_step=_current_step(spec, state, steps, failed_step),
        business_key=next((e.business_key for e in timeline if e.business_key), None),
    )


def _current_step(
    spec: SagaSpec, state: SagaState, steps: Mapping[str, Mapping[str, Any]], failed: str | None
) -> str | None:
    """The step the saga waits on: the next to run, or, going backward, the next to undo."""
    if state.ended:
        return None
    names = [step.name for step in spec.steps]
    if state is SagaState.COMPENSATING:
        if failed is None or failed not in names:
            return None
        earlier = spec.steps[: names.index(failed)]
        for step in reversed(earlier):
            if step.has_compensation and "compensated_at" not in steps[step.name]:
                return step.name
        return None
    return next((name for name in names if not steps[name]), None)


def _state(seen: set[_Role]) -> SagaState:
    if _Role.CANCELLED in seen:
        return SagaState.CANCELLED
    if _Role.COMPLETED in seen:
        return SagaState.FULFILLED
    if seen & {_Role.FAILURE, _Role.COMPENSATED}:
        return SagaState.COMPENSATING
    if _Role.SUCCESS in seen:
        return SagaState.PENDING
    if _Role.START in seen:
        return SagaState.STARTED
    # Only events the spec does not name: something is happening, so it is in progress.
    return SagaState.PENDING


def _step_view(name: str, participant: str, facts: Mapping[str, Any]) -> StepView:
    outcome = None
    if "compensated_at" in facts:
        outcome = "compensated"
    elif "failed_at" in facts:
        outcome = "failed"
    elif "completed_at" in facts:
        outcome = "completed"
    return StepView(step=name, participant=participant, outcome=outcome, **facts)


class _WireEvent(BaseModel):
    """The parts of an envelope the tracker reads; the payload stays a plain mapping."""

    model_config = ConfigDict(extra="ignore")

    event_id: str
    event_type: str
    occurred_at: AwareDatetime
    producer: str
    context: SagaContext
    payload: dict[str, Any] = {}


def trace_id_from(headers: Mapping[str, Any]) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None."""
    value = headers.get("traceparent")
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1].lower()


def decode_event(
    body: bytes | str, headers: Mapping[str, Any], *, spec: SagaSpec | None = None
) -> TrackedEvent:
    """What the tracker keeps of an event as it travels on the wire (or sits in an outbox).

    With ``spec``, the event's business key (``spec.business_key``) is read from its
    payload, or from the start event's payload it carries (``spec.start_field``).

    Raises:
        InvalidMessage: The body is not an event envelope.
    """
    try:
        wire = _WireEvent.model_validate_json(body)
    except (ValidationError, ValueError) as exc:
        raise InvalidMessage(f"not an event envelope: {type(exc).__name__}") from exc
    reason = wire.payload.get("reason")
    failed_step = wire.payload.get("failed_step")
    return TrackedEvent(
        event_id=wire.event_id,
        event_type=wire.event_type,
        producer=wire.producer,
        occurred_at=wire.occurred_at.astimezone(UTC),
        saga_id=str(wire.context.saga_id),
        saga_type=wire.context.saga_type,
        deadline=wire.context.deadline.astimezone(UTC) if wire.context.deadline else None,
        reason=reason if isinstance(reason, str) else None,
        failed_step=failed_step if isinstance(failed_step, str) else None,
        trace_id=trace_id_from(headers),
        causation_id=str(wire.context.causation_id) if wire.context.causation_id else None,
        business_key=_business_key(wire.payload, spec),
        body=body.encode() if isinstance(body, str) else bytes(body),
        headers={str(k): _header_text(v) for k, v in headers.items() if _header_text(v)},
    )


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


def _business_key(payload: Mapping[str, Any], spec: SagaSpec | None) -> str | None:
    if spec is None or spec.business_key is None:
        return None
    value = payload.get(spec.business_key)
    if value is None and spec.start_field is not None:
        carried = payload.get(spec.start_field)
        if isinstance(carried, Mapping):
            value = carried.get(spec.business_key)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)[:200]
    return None


def view_as_dict(view: SagaView) -> dict[str, Any]:
    """A JSON-ready form of a view (times as RFC 3339 strings)."""
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(view), default=_isoformat))
    return plain


def _isoformat(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
