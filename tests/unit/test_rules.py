"""The compensation rules (docs/design.md §4 rule 1) as pure decisions."""

from __future__ import annotations

import itertools

import pytest
from order_contracts import ORDER_SAGA
from sagakit.runtime._rules import (
    CompensationDecision,
    ForwardDecision,
    compensation_order,
    on_compensation,
    on_forward,
)
from sagakit.store import StepStatus


def test_forward_work_runs_once() -> None:
    assert on_forward(None, past_deadline=False) is ForwardDecision.RUN
    for status in StepStatus:
        assert on_forward(status, past_deadline=False) is ForwardDecision.IGNORE


def test_forward_work_after_compensation_never_resurrects_the_saga() -> None:
    assert on_forward(StepStatus.COMPENSATED, past_deadline=False) is ForwardDecision.IGNORE


def test_forward_work_past_the_deadline_fails_the_step() -> None:
    assert on_forward(None, past_deadline=True) is ForwardDecision.FAIL_DEADLINE
    assert on_forward(StepStatus.COMPLETED, past_deadline=True) is ForwardDecision.IGNORE


def test_only_what_was_done_is_undone_and_only_once() -> None:
    assert on_compensation(StepStatus.COMPLETED) is CompensationDecision.UNDO
    assert on_compensation(StepStatus.COMPENSATED) is CompensationDecision.ANNOUNCE_AGAIN
    assert on_compensation(StepStatus.RUNNING) is CompensationDecision.NOTHING_TO_UNDO
    assert on_compensation(StepStatus.FAILED) is CompensationDecision.IGNORE


def test_a_compensation_for_a_saga_never_seen_here_is_not_guessed_at() -> None:
    assert on_compensation(None) is CompensationDecision.UNKNOWN_SAGA


@pytest.mark.parametrize(
    ("failed", "undone"),
    [
        ("reserve_stock", []),
        ("charge_payment", ["reserve_stock"]),
        ("ship_order", ["charge_payment", "reserve_stock"]),
        ("confirm_order", ["ship_order", "charge_payment", "reserve_stock"]),
    ],
)
def test_compensation_runs_in_reverse_order(failed: str, undone: list[str]) -> None:
    assert [s.name for s in compensation_order(ORDER_SAGA, failed)] == undone


def test_each_compensable_step_is_triggered_by_the_next_steps_failure_and_compensation() -> None:
    steps = ORDER_SAGA.steps
    for step, following in itertools.pairwise(steps):
        if step.has_compensation:
            assert following.failure in step.compensate_on
            if following.compensated:
                assert following.compensated in step.compensate_on
