"""docs/design.md §4 rule 1 as pure decisions: what a participant does with an incoming event,
given where its step stands for that saga. The runtime carries the decisions out."""

from __future__ import annotations

from enum import StrEnum

from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._store import StepStatus


class ForwardDecision(StrEnum):
    """What to do with the event that triggers a step."""

    RUN = "run"  # first time: do the step
    FAIL_DEADLINE = "fail_deadline"  # first time, but the saga's deadline has passed
    IGNORE = "ignore"  # done, failed or compensated already: never resurrect a saga


class CompensationDecision(StrEnum):
    """What to do with an event that asks a step to be undone."""

    UNDO = "undo"  # the step completed: undo it, announce the compensated event
    ANNOUNCE_AGAIN = "announce_again"  # undone before: no-op, announce again (same event id)
    NOTHING_TO_UNDO = "nothing_to_undo"  # started, never finished: no-op, announce
    IGNORE = "ignore"  # the step failed itself: its own failure started the backward path
    UNKNOWN_SAGA = "unknown_saga"  # no record of the saga here: park, do not guess


def on_forward(status: StepStatus | None, *, past_deadline: bool) -> ForwardDecision:
    """Decide on a forward event; ``status`` is None when the step never started."""
    if status is not None:
        return ForwardDecision.IGNORE
    return ForwardDecision.FAIL_DEADLINE if past_deadline else ForwardDecision.RUN


def on_compensation(status: StepStatus | None) -> CompensationDecision:
    """Decide on a compensation request; ``status`` is None when the step never started.

    A compensation request is caused by a later step, and a later step is triggered by this
    step's success event, which is only published after this step's record is committed.
    So in a saga this participant took part in, the record is always there; a request for a
    saga with no record comes from outside the flow (a message published by hand, replayed
    from another environment, or forged), or the store lost the record (restored from an
    old backup). Neither is for the runtime to guess about: announcing the compensation
    would end, and tell the customer about, a saga nobody started. The request is parked
    as ``unknown_saga``. The saga's context is no evidence either way: whoever publishes the
    event writes it.
    """
    if status is StepStatus.COMPLETED:
        return CompensationDecision.UNDO
    if status is StepStatus.COMPENSATED:
        return CompensationDecision.ANNOUNCE_AGAIN
    if status is StepStatus.FAILED:
        return CompensationDecision.IGNORE
    if status is None:
        return CompensationDecision.UNKNOWN_SAGA
    return CompensationDecision.NOTHING_TO_UNDO


def compensation_order(spec: SagaSpec, failed_step: str) -> list[StepSpec]:
    """The steps undone when ``failed_step`` fails: every earlier step with an effect,
    latest first."""
    names = [step.name for step in spec.steps]
    earlier = spec.steps[: names.index(failed_step)]
    return [step for step in reversed(earlier) if step.has_compensation]
