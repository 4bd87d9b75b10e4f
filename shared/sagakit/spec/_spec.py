"""The choreography spec: the order of a flow, written down once as data."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sagakit._envelope import EventPayload
from sagakit._exceptions import SpecError


class StepSpec(BaseModel):
    """One step of a saga, owned by one participant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    participant: str
    trigger: str
    success: str
    failure: str
    compensate_on: tuple[str, ...] = ()
    compensated: str | None = None

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
        carry: The payload field that every event after the start event carries (the start
            event's payload itself), so that sagakit can fill it into the events it builds
            on its own: failures, no-op compensations and the cancellation.
        business_key: The start event's payload field that names a saga for people (the
            order id), found again in later events inside ``carry``; the tracker indexes it
            so that the console finds a saga by it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    saga_type: str
    exchange: str
    start_event: str
    completed_event: str
    cancelled_event: str
    steps: tuple[StepSpec, ...]
    reactions: tuple[ReactionSpec, ...] = ()
    carry: str | None = None
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
        return self

    def step(self, name: str) -> StepSpec:
        """The step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise SpecError(f"{self.saga_type} has no step {name!r}")

    def is_first(self, step: StepSpec) -> bool:
        """True for the step whose backward path ends the saga with the cancellation."""
        return self.steps[0].name == step.name

    def model_for(self, event_type: str) -> type[EventPayload]:
        """The payload model registered for ``event_type``."""
        try:
            return self.events[event_type]
        except KeyError:
            raise SpecError(f"no payload model registered for {event_type!r}") from None

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
