"""DESIGN.md §4 rule 1 as pure decisions: what a participant does with an incoming event,
given where its step stands for that saga. The runtime carries the decisions out."""

from __future__ import annotations

from enum import StrEnum

from ._spec import SagaSpec, StepSpec
from ._store import StepStatus


class ForwardDecision(StrEnum):
    """What to do with the event that triggers a step."""

    RUN = "run"  # first time: do the step
    FAIL_DEADLINE = "fail_deadline"  # first time, but the saga's deadline has passed
    IGNORE = "ignore"  # done, failed or compensated already: never resurrect a saga


class CompensationDecision(StrEnum):
    """What to do with an event that asks a step to be undone."""

    UNDO = "undo"  # the step completed: undo it, announce the compensated event
    ANNOUNCE_AGAIN = "announce_again"  # undone before: no-op, announce again (same event id)
    NOTHING_TO_UNDO = "nothing_to_undo"  # never done: no-op, announce so the path goes on
    IGNORE = "ignore"  # the step failed itself: its own failure started the backward path


def on_forward(status: StepStatus | None, *, past_deadline: bool) -> ForwardDecision:
    """Decide on a forward event; ``status`` is None when the step never started."""
    if status is not None:
        return ForwardDecision.IGNORE
    return ForwardDecision.FAIL_DEADLINE if past_deadline else ForwardDecision.RUN


def on_compensation(status: StepStatus | None) -> CompensationDecision:
    """Decide on a compensation request; ``status`` is None when the step never started."""
    if status is StepStatus.COMPLETED:
        return CompensationDecision.UNDO
    if status is StepStatus.COMPENSATED:
        return CompensationDecision.ANNOUNCE_AGAIN
    if status is StepStatus.FAILED:
        return CompensationDecision.IGNORE
    return CompensationDecision.NOTHING_TO_UNDO


def compensation_order(spec: SagaSpec, failed_step: str) -> list[StepSpec]:
    """The steps undone when ``failed_step`` fails: every earlier step with an effect,
    latest first."""
    names = [step.name for step in spec.steps]
    earlier = spec.steps[: names.index(failed_step)]
    return [step for step in reversed(earlier) if step.has_compensation]
