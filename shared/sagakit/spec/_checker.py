"""The choreography checker: what a spec (and the services built on it) let happen.

Two views of one flow. The *static* view reads the spec: who consumes and who produces each
event, which step is undone on which event. The *dynamic* view walks the flow the way the
runtime would run it (the same pure rules, ``_rules``): once without a failure, then with a
failure at each step in turn, and records every hop. The checker compares both with what a
choreography must guarantee; ``saga graph`` draws the hops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from sagakit.runtime import _rules as rules
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._store import StepStatus

if TYPE_CHECKING:
    # Only a type here: importing the participant API would import the spec back.
    from sagakit.runtime._participant import Subscription

CLIENT = "client"
"""Who produces the start event: whoever asks for the saga, not a participant."""


class GapKind(StrEnum):
    """What kind of promise a choreography breaks."""

    UNREGISTERED_EVENT = "unregistered_event"
    """An event the spec names has no payload model."""
    MISSING_COMPENSATION = "missing_compensation"
    """A step with an effect is not undone on the next step's failure or compensation."""
    NEVER_PRODUCED = "never_produced"
    """Someone waits for an event that nobody emits."""
    NEVER_CONSUMED = "never_consumed"
    """An event that is emitted, does not end the saga, and that nobody reacts to."""
    BROKEN_PATH = "broken_path"
    """A forward or backward path that does not end in its terminal event, all or nothing."""
    UNSUBSCRIBED_TRIGGER = "unsubscribed_trigger"
    """The spec has a participant consume an event its service does not subscribe to."""
    UNDECLARED_SUBSCRIPTION = "undeclared_subscription"
    """A service subscribes to an event the spec does not give it."""


@dataclass(frozen=True, slots=True)
class Gap:
    """One broken promise of a choreography, in plain words.

    Attributes:
        kind: Which promise.
        message: What is wrong, naming the steps, participants and events involved.
    """

    kind: GapKind
    message: str

    def __str__(self) -> str:
        return self.message


class Move(StrEnum):
    """What a hop of a path does."""

    FORWARD = "forward"  # a step completed: its success event
    FAIL = "fail"  # a step failed: its failure event
    UNDO = "undo"  # a compensation ran (or was a no-op): the compensated event
    CANCEL = "cancel"  # whoever finishes the backward path: the cancelled event
    REACT = "react"  # a reaction: a side effect, nothing emitted


@dataclass(frozen=True, slots=True)
class Hop:
    """One handler run: ``participant`` consumed ``source`` and emitted ``target``."""

    source: str
    target: str | None
    participant: str
    name: str
    move: Move


@dataclass(frozen=True, slots=True)
class FlowPath:
    """One run of the flow, as the runtime's rules play it out.

    Attributes:
        failed_step: The step made to fail, or None for the forward path.
        hops: Every handler run, in order.
        completed: Steps that completed, in order.
        undone: Steps whose completed work was undone, in order.
        dead_ends: Events after which nothing more is emitted, though they do not end the
            saga.
    """

    failed_step: str | None
    hops: tuple[Hop, ...]
    completed: tuple[str, ...]
    undone: tuple[str, ...]
    dead_ends: tuple[str, ...]

    @property
    def emitted(self) -> tuple[str, ...]:
        """Every event emitted on the path, in order (the start event first)."""
        seen: dict[str, None] = {}
        for hop in self.hops:
            seen.setdefault(hop.source, None)
            if hop.target is not None:
                seen.setdefault(hop.target, None)
        return tuple(seen)


def check_choreography(
    spec: SagaSpec, subscriptions: Iterable[Subscription] | None = None
) -> list[Gap]:
    """Every gap in ``spec``'s choreography; an empty list when there is none.

    Checks that every step with an effect is undone on the next step's failure and on the
    next step's compensated event; that the forward path ends in the completed event and the
    backward path after a failure at each step undoes every completed step once, in reverse
    order, and ends in the cancelled event; that no event is consumed but never produced, or
    produced but never consumed (the events that end a saga excepted); that every event has
    a payload model; and, given the services' actual subscriptions, that they are exactly
    the ones the spec names.

    Args:
        spec: The flow to check.
        subscriptions: What the running services subscribe to (``SagaRuntime.subscriptions``
            of each participant); None to check the spec alone.

    Example:
        ```python
        for gap in check_choreography(ORDER_SAGA):
            print(gap)
        ```
    """
    gaps = [
        *_unregistered_events(spec),
        *_missing_compensations(spec),
        *_unbalanced_events(spec),
        *_broken_paths(spec),
    ]
    if subscriptions is not None:
        gaps.extend(_subscription_gaps(spec, list(subscriptions)))
    return gaps


# -- the static view ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventUse:
    """One place where the spec names an event: who, and in which role."""

    event: str
    participant: str
    role: str


def consumed_events(spec: SagaSpec) -> list[EventUse]:
    """Every (event, participant) the spec has consume an event, in flow order."""
    uses = []
    for step in spec.steps:
        uses.append(EventUse(step.trigger, step.participant, f"trigger of step {step.name}"))
        if step.has_compensation:
            uses.extend(
                EventUse(event, step.participant, f"compensation of step {step.name}")
                for event in step.compensate_on
            )
    uses.extend(
        EventUse(r.trigger, r.participant, f"trigger of reaction {r.name}") for r in spec.reactions
    )
    return uses


def produced_events(spec: SagaSpec) -> list[EventUse]:
    """Every (event, producer) the runtime may emit for ``spec``, in flow order."""
    uses = [EventUse(spec.start_event, CLIENT, "start of the saga")]
    for step in spec.steps:
        uses.append(EventUse(step.success, step.participant, f"success of step {step.name}"))
        uses.append(EventUse(step.failure, step.participant, f"failure of step {step.name}"))
        if step.compensated is not None:
            uses.append(
                EventUse(step.compensated, step.participant, f"compensation of step {step.name}")
            )
    for step in spec.steps:
        if spec.ends_backward_path(step):
            uses.append(
                EventUse(spec.cancelled_event, step.participant, "end of the backward path")
            )
    return uses


def emitted_events(spec: SagaSpec, participant: str) -> tuple[str, ...]:
    """The event types ``participant`` emits under ``spec``, once each, in flow order."""
    seen = {u.event: None for u in produced_events(spec) if u.participant == participant}
    return tuple(seen)


def final_events(spec: SagaSpec) -> frozenset[str]:
    """Events that end a path: the terminal events, and the failure and compensated events
    the runtime publishes together with the cancelled event (of the steps that end the
    backward path: those with no compensation before them)."""
    ends = {spec.completed_event, spec.cancelled_event}
    for step in spec.steps:
        if spec.ends_backward_path(step):
            ends.add(step.failure)
            if step.compensated is not None:
                ends.add(step.compensated)
    return frozenset(ends)


def _named_events(spec: SagaSpec) -> list[tuple[str, str]]:
    named = [
        (spec.start_event, "start event"),
        (spec.completed_event, "completed event"),
        (spec.cancelled_event, "cancelled event"),
    ]
    named.extend((u.event, u.role) for u in (*produced_events(spec), *consumed_events(spec)))
    return named


def _unregistered_events(spec: SagaSpec) -> Iterator[Gap]:
    reported: set[str] = set()
    for event, role in _named_events(spec):
        if event not in spec.events and event not in reported:
            reported.add(event)
            yield Gap(
                GapKind.UNREGISTERED_EVENT,
                f"{event} ({role}) has no payload model registered in the spec's events",
            )


def _missing_compensations(spec: SagaSpec) -> Iterator[Gap]:
    # Only a compensate_on written by hand can miss one: the derived one is complete.
    for step in spec.steps:
        if not step.has_compensation:
            continue
        for event in spec.undo_triggers(step):
            if event not in step.compensate_on:
                producer = next(s for s in spec.steps if event in {s.failure, s.compensated})
                what = "failure" if event == producer.failure else "compensated event"
                yield Gap(
                    GapKind.MISSING_COMPENSATION,
                    f"step {step.name} ({step.participant}) has an effect to undo, but its "
                    f"compensate_on leaves out {event}, the {what} of the later step "
                    f"{producer.name}: add it, or leave compensate_on out to have it derived",
                )


def _unbalanced_events(spec: SagaSpec) -> Iterator[Gap]:
    consumed = consumed_events(spec)
    produced = produced_events(spec)
    consumed_names = {u.event for u in consumed}
    produced_names = {u.event for u in produced}
    reported: set[str] = set()
    for use in consumed:
        if use.event not in produced_names and use.event not in reported:
            reported.add(use.event)
            yield Gap(
                GapKind.NEVER_PRODUCED,
                f"{use.participant} consumes {use.event} ({use.role}), "
                "but no participant produces it",
            )
    ends = final_events(spec)
    for use in produced:
        if use.event in consumed_names or use.event in ends or use.event in reported:
            continue
        reported.add(use.event)
        yield Gap(
            GapKind.NEVER_CONSUMED,
            f"{use.participant} produces {use.event} ({use.role}), but no participant consumes it",
        )


def _subscription_gaps(spec: SagaSpec, subscriptions: list[Subscription]) -> Iterator[Gap]:
    actual = {(s.participant, s.event_type) for s in subscriptions}
    declared = {(u.participant, u.event) for u in consumed_events(spec)}
    for use in consumed_events(spec):
        if (use.participant, use.event) not in actual:
            yield Gap(
                GapKind.UNSUBSCRIBED_TRIGGER,
                f"the spec has {use.participant} consume {use.event} ({use.role}), "
                f"but the {use.participant} service does not subscribe to it",
            )
    reported: set[tuple[str, str]] = set()
    for sub in subscriptions:
        key = (sub.participant, sub.event_type)
        if key not in declared and key not in reported:
            reported.add(key)
            yield Gap(
                GapKind.UNDECLARED_SUBSCRIPTION,
                f"the {sub.participant} service subscribes to {sub.event_type} "
                f"({sub.kind.value} {sub.name}), which the spec does not give it",
            )


# -- the dynamic view --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Handler:
    participant: str
    name: str
    move: Move
    step: StepSpec | None


def _handlers(spec: SagaSpec, event: str) -> list[_Handler]:
    """Who runs on ``event``, in the order ``Participant.subscriptions`` lists them."""
    found = []
    for step in spec.steps:
        if step.trigger == event:
            found.append(_Handler(step.participant, step.name, Move.FORWARD, step))
        if step.has_compensation and event in step.compensate_on:
            found.append(_Handler(step.participant, step.name, Move.UNDO, step))
    found.extend(
        _Handler(r.participant, r.name, Move.REACT, None)
        for r in spec.reactions
        if r.trigger == event
    )
    return found


@dataclass
class _Walk:
    spec: SagaSpec
    failed_step: str | None
    status: dict[str, StepStatus] = field(default_factory=dict)
    hops: list[Hop] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    undone: list[str] = field(default_factory=list)
    # Event ids derive from (saga, producer, event type), so a second announcement of the
    # same event by the same producer is dropped by every inbox: it travels once.
    announced: set[tuple[str, str]] = field(default_factory=set)
    queue: deque[str] = field(default_factory=deque)

    def run(self) -> FlowPath:
        self._announce(CLIENT, self.spec.start_event)
        while self.queue:
            event = self.queue.popleft()
            for handler in _handlers(self.spec, event):
                self._handle(event, handler)
        path = FlowPath(
            failed_step=self.failed_step,
            hops=tuple(self.hops),
            completed=tuple(self.completed),
            undone=tuple(self.undone),
            dead_ends=(),
        )
        ends = final_events(self.spec)
        onward = {hop.source for hop in self.hops if hop.target is not None}
        leaves = tuple(e for e in path.emitted if e not in ends and e not in onward)
        return replace(path, dead_ends=leaves)

    def _announce(self, producer: str, event: str) -> None:
        if (producer, event) not in self.announced:
            self.announced.add((producer, event))
            self.queue.append(event)

    def _emit(self, source: str, handler: _Handler, target: str | None, move: Move) -> None:
        self.hops.append(Hop(source, target, handler.participant, handler.name, move))
        if target is not None:
            self._announce(handler.participant, target)

    def _cancel(self, cause: str, handler: _Handler) -> None:
        self._emit(cause, handler, self.spec.cancelled_event, Move.CANCEL)

    def _handle(self, event: str, handler: _Handler) -> None:
        step = handler.step
        if step is None:
            self._emit(event, handler, None, Move.REACT)
        elif handler.move is Move.FORWARD:
            self._forward(event, handler, step)
        else:
            self._compensate(event, handler, step)

    def _forward(self, event: str, handler: _Handler, step: StepSpec) -> None:
        decision = rules.on_forward(self.status.get(step.name), past_deadline=False)
        if decision is not rules.ForwardDecision.RUN:
            return
        if step.name == self.failed_step:
            self.status[step.name] = StepStatus.FAILED
            self._emit(event, handler, step.failure, Move.FAIL)
            if self.spec.ends_backward_path(step):
                self._cancel(step.failure, handler)
            return
        self.status[step.name] = StepStatus.COMPLETED
        self.completed.append(step.name)
        self._emit(event, handler, step.success, Move.FORWARD)

    def _compensate(self, event: str, handler: _Handler, step: StepSpec) -> None:
        assert step.compensated is not None
        decision = rules.on_compensation(self.status.get(step.name))
        if decision is rules.CompensationDecision.IGNORE:
            return
        if decision is rules.CompensationDecision.UNDO:
            self.undone.append(step.name)
        self.status[step.name] = StepStatus.COMPENSATED
        self._emit(event, handler, step.compensated, Move.UNDO)
        if self.spec.ends_backward_path(step):
            self._cancel(step.compensated, handler)


def walk(spec: SagaSpec, *, failed_step: str | None = None) -> FlowPath:
    """Play ``spec`` out with the runtime's rules, the step ``failed_step`` failing."""
    return _Walk(spec, failed_step).run()


def all_paths(spec: SagaSpec) -> list[FlowPath]:
    """The forward path, then the backward path after a failure at each step in turn."""
    return [walk(spec), *(walk(spec, failed_step=s.name) for s in spec.steps)]


def _broken_paths(spec: SagaSpec) -> Iterator[Gap]:
    for path in all_paths(spec):
        problems = _path_problems(spec, path)
        if problems:
            where = (
                "the forward path"
                if path.failed_step is None
                else f"after a failure at {path.failed_step}, the backward path"
            )
            yield Gap(GapKind.BROKEN_PATH, f"{where} " + "; ".join(problems))


def _path_problems(spec: SagaSpec, path: FlowPath) -> list[str]:
    emitted = path.emitted
    problems = []
    if path.failed_step is None:
        expected, unexpected = spec.completed_event, spec.cancelled_event
    else:
        expected, unexpected = spec.cancelled_event, spec.completed_event
    if expected not in emitted:
        problems.append(f"never reaches {expected}: {_where_it_stops(spec, path)}")
    if unexpected in emitted:
        problems.append(f"reaches {unexpected}")
    if path.failed_step is None:
        skipped = [s.name for s in spec.steps if s.name not in path.completed]
        if skipped and expected in emitted:
            problems.append(f"ends without running {', '.join(skipped)}")
        return problems
    must_undo = [name for name in reversed(path.completed) if spec.step(name).has_compensation]
    left = [name for name in must_undo if name not in path.undone]
    if left:
        problems.append(
            "never undoes " + ", ".join(f"{name} ({spec.step(name).participant})" for name in left)
        )
    elif list(path.undone) != must_undo:
        problems.append(
            f"undoes {', '.join(path.undone)}, which is not the reverse order "
            f"({', '.join(must_undo)})"
        )
    return problems


def _where_it_stops(spec: SagaSpec, path: FlowPath) -> str:
    if not path.dead_ends:
        return "it goes round without ending"
    stops = []
    for event in path.dead_ends:
        if _handlers(spec, event):
            stops.append(f"{event}, after which nothing is emitted")
        else:
            stops.append(f"{event}, which no one consumes")
    return "it stops at " + " and at ".join(stops)
