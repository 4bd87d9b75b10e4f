"""The choreography spec: the order of a flow, written down once as data."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sagakit._envelope import EventPayload
from sagakit._exceptions import SpecError
from sagakit._system_events import (
    SYSTEM_FIELDS,
    CancelledEvent,
    CompensatedEvent,
    FailureEvent,
)


class StepSpec(BaseModel):
    """One step of a saga, owned by one participant.

    Attributes:
        name: The step's name, unique in the flow.
        participant: Who does the step.
        trigger: The event that starts it (the previous step's success event).
        success: The event it announces when done.
        failure: The event sagakit announces when it fails (a ``FailureEvent``).
        compensated: The event it announces once undone (a ``CompensatedEvent``); None for
            a step with nothing in its database to undo.
        compensate_on: The events that undo it. Leave it out: the spec derives it from the
            step order (the failure events of the later steps up to the next step that has
            a compensation, and that step's compensated event).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    participant: str
    trigger: str
    success: str
    failure: str
    compensated: str | None = None
    compensate_on: tuple[str, ...] = ()

    @property
    def has_compensation(self) -> bool:
        """True when the step has an effect that must be undone on the backward path."""
        return self.compensated is not None


class ReactionSpec(BaseModel):
    """A side effect on an event that emits nothing (e.g. sending a cancellation notice)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    participant: str
    trigger: str


class SagaSpec(BaseModel):
    """A whole flow: its steps in order, its terminal events, and its event models.

    Attributes:
        start_field: The field in which every event after the start event holds the start
            event's payload (``order`` in the order flow), so that sagakit fills it into the
            events it builds on its own: failures, no-op compensations and the
            cancellation. Data the steps gather on the way travels in the saga's data bag
            (``StepContext.add_data``), not here.
        business_key: The start event's payload field that names a saga for people (the
            order id), found again in later events inside ``start_field``; the tracker
            indexes it so that the console finds a saga by it.
        steps: The steps in order; each one's ``compensate_on`` is derived from it.
        events: The payload model of every event, by event type (``event_models`` makes
            the mapping from the models).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    saga_type: str
    exchange: str
    start_event: str
    completed_event: str
    cancelled_event: str
    steps: tuple[StepSpec, ...]
    reactions: tuple[ReactionSpec, ...] = ()
    start_field: str | None = None
    business_key: str | None = None
    events: Mapping[str, type[EventPayload]] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _names_are_consistent(self) -> SagaSpec:
        if not self.steps:
            raise SpecError("a saga needs at least one step")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise SpecError(f"step names repeat: {names}")
        for event_type, model in self.events.items():
            if model.event_type != event_type:
                raise SpecError(
                    f"{model.__name__}.event_type is {model.event_type!r}, registered as "
                    f"{event_type!r}"
                )
        # Frozen, but still being built: the derived backward path is part of the spec.
        object.__setattr__(self, "steps", self._with_backward_path())
        problems = list(self._unbuildable_events())
        if len(problems) == 1:
            raise SpecError(f"{self.saga_type}: {problems[0]}")
        if problems:
            raise SpecError(
                f"{self.saga_type}: {len(problems)} events sagakit cannot build:\n"
                + "\n".join(f"- {problem}" for problem in problems)
            )
        return self

    def _with_backward_path(self) -> tuple[StepSpec, ...]:
        steps = []
        for step in self.steps:
            if step.compensated is None:
                if step.compensate_on:
                    raise SpecError(
                        f"step {step.name} has compensate_on but no compensated event: "
                        "name the event it announces once undone, or drop compensate_on"
                    )
                steps.append(step)
                continue
            triggers = step.compensate_on or self.undo_triggers(step, steps=self.steps)
            if not triggers:
                raise SpecError(
                    f"step {step.name} ({step.participant}) declares the compensated event "
                    f"{step.compensated}, but no later step can fail, so nothing would ever "
                    "undo it: remove compensated (an effect outside the database is undone "
                    "by an undo the step registers itself, StepContext.undo)"
                )
            steps.append(step.model_copy(update={"compensate_on": triggers}))
        return tuple(steps)

    def undo_triggers(
        self, step: StepSpec, *, steps: tuple[StepSpec, ...] | None = None
    ) -> tuple[str, ...]:
        """What undoes ``step`` by the step order (``compensate_on``'s default): the failure
        of every later step up to the next one with a compensation, then that one's
        compensated event."""
        steps = self.steps if steps is None else steps
        names = [s.name for s in steps]
        triggers: list[str] = []
        for later in steps[names.index(step.name) + 1 :]:
            triggers.append(later.failure)
            if later.compensated is not None:
                triggers.append(later.compensated)
                break
        return tuple(triggers)

    def _unbuildable_events(self) -> Iterator[str]:
        """Every event sagakit builds on its own that it could not build, in words."""
        built: list[tuple[str, type[EventPayload], str, tuple[str, ...]]] = []
        for step in self.steps:
            built.append(
                (step.failure, FailureEvent, f"failure of step {step.name}", (step.trigger,))
            )
            if step.compensated is not None:
                built.append(
                    (
                        step.compensated,
                        CompensatedEvent,
                        f"compensated event of step {step.name}",
                        step.compensate_on,
                    )
                )
        built.append(
            (self.cancelled_event, CancelledEvent, "cancelled event", self._cancel_causes())
        )
        for event_type, base, role, sources in built:
            model = self.events.get(event_type)
            if model is None:
                continue  # an unregistered event is a gap of its own (saga check)
            yield from self._unbuildable(model, base, role, sources)

    def _unbuildable(
        self,
        model: type[EventPayload],
        base: type[EventPayload],
        role: str,
        sources: tuple[str, ...],
    ) -> Iterator[str]:
        where = f"{model.__name__} ({model.event_type}, the {role})"
        filled = SYSTEM_FIELDS[base]
        for name in filled:
            if name not in model.model_fields:
                yield (
                    f"{where} has no field {name!r}: sagakit fills it when it builds the "
                    f"event; extend sagakit.{base.__name__}"
                )
        carried = self.start_field if self.start_field in model.model_fields else None
        for name, info in model.model_fields.items():
            if info.is_required() and name not in filled and name != carried:
                yield (
                    f"{where} requires the field {name!r}, which sagakit cannot fill when it "
                    f"builds the event: give {name!r} a default (sagakit fills only "
                    f"{', '.join((*filled, *filter(None, [carried]))) or 'nothing'})"
                )
        if carried is None:
            return
        yield from self._carry_problems(model, where, sources)

    def _carry_problems(
        self, model: type[EventPayload], where: str, sources: tuple[str, ...]
    ) -> Iterator[str]:
        assert self.start_field is not None
        start = self.events.get(self.start_event)
        annotation: Any = model.model_fields[self.start_field].annotation
        if (
            start is not None
            and inspect.isclass(annotation)
            and issubclass(annotation, BaseModel)
            and not issubclass(start, annotation)
        ):
            yield (
                f"{where}: its field {self.start_field!r} is a {annotation.__name__}, but sagakit "
                f"fills it with the start event {start.__name__}: make {start.__name__} a "
                f"{annotation.__name__}, or type the field as {start.__name__}"
            )
        if not model.model_fields[self.start_field].is_required():
            return
        for source in sources:
            source_model = self.events.get(source)
            if (
                source != self.start_event
                and source_model is not None
                and self.start_field not in source_model.model_fields
            ):
                yield (
                    f"{where} requires {self.start_field!r}, which sagakit copies from {source}, "
                    f"but {source_model.__name__} has no field {self.start_field!r}: add it"
                )

    def _cancel_causes(self) -> tuple[str, ...]:
        """The events the cancellation is built from (announced together with it)."""
        causes = [s.failure for s in self.steps if self.ends_backward_path(s)]
        earliest = next((s for s in self.steps if s.compensated is not None), None)
        if earliest is not None and earliest.compensated is not None:
            causes.append(earliest.compensated)
        return tuple(dict.fromkeys(causes))

    @property
    def carry(self) -> str | None:
        """The old name of ``start_field``; removed before the first release."""
        return self.start_field

    def step(self, name: str) -> StepSpec:
        """The step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise SpecError(f"{self.saga_type} has no step {name!r}")

    def ends_backward_path(self, step: StepSpec) -> bool:
        """True when no step before ``step`` has a compensation: its participant ends the
        saga with the cancelled event, when ``step`` fails or once it is undone."""
        for earlier in self.steps:
            if earlier.name == step.name:
                return True
            if earlier.compensated is not None:
                return False
        raise SpecError(f"{self.saga_type} has no step {step.name!r}")

    def model_for(self, event_type: str) -> type[EventPayload]:
        """The payload model registered for ``event_type``."""
        try:
            return self.events[event_type]
        except KeyError:
            raise SpecError(
                f"no payload model registered for {event_type!r}: add its model to the "
                f"spec's events ({self.saga_type})"
            ) from None

    def participants(self) -> tuple[str, ...]:
        """Every participant named by a step or a reaction, in flow order, once each."""
        seen: dict[str, None] = {}
        items: tuple[StepSpec | ReactionSpec, ...] = (*self.steps, *self.reactions)
        for item in items:
            seen.setdefault(item.participant, None)
        return tuple(seen)

    def terminal_events(self) -> frozenset[str]:
        """The events after which a saga has ended."""
        return frozenset({self.completed_event, self.cancelled_event})


def event_models(*models: type[EventPayload]) -> dict[str, type[EventPayload]]:
    """``models`` by their event type, for ``SagaSpec.events``."""
    return {model.event_type: model for model in models}
