"""Programming errors fail fast: parked as ``handler_error`` with a summary, never retried as
transient, never cancelling the saga; the harnesses raise them at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from sagakit import (
    CancelledEvent,
    CompensatedEvent,
    EventPayload,
    FailureEvent,
    HandlerError,
    Participant,
    ParticipantSettings,
    SagaService,
    SagaSpec,
    StepContext,
    StepSpec,
    build_service,
)
from sagakit.testing import FlowHarness, ParticipantHarness


class Opened(EventPayload):
    event_type: ClassVar[str] = "bug.opened"
    title: str


class Triaged(EventPayload):
    event_type: ClassVar[str] = "bug.triaged"
    severity: int


class TriageFailed(FailureEvent):
    event_type: ClassVar[str] = "triage.failed"


class Untriaged(CompensatedEvent):
    event_type: ClassVar[str] = "triage.undone"


class Fixed(EventPayload):
    event_type: ClassVar[str] = "bug.fixed"


class FixFailed(FailureEvent):
    event_type: ClassVar[str] = "fix.failed"


class Dropped(CancelledEvent):
    event_type: ClassVar[str] = "bug.dropped"


BUGS = SagaSpec(
    saga_type="bug",
    exchange="bugs",
    start_event="bug.opened",
    completed_event="bug.fixed",
    cancelled_event="bug.dropped",
    steps=(
        StepSpec(
            name="triage",
            participant="triage",
            trigger="bug.opened",
            success="bug.triaged",
            failure="triage.failed",
            compensated="triage.undone",
        ),
        StepSpec(
            name="fix",
            participant="fixer",
            trigger="bug.triaged",
            success="bug.fixed",
            failure="fix.failed",
        ),
    ),
    events={
        m.event_type: m
        for m in (Opened, Triaged, TriageFailed, Untriaged, Fixed, FixFailed, Dropped)
    },
)

calls: list[str] = []


def services(tmp_path: Path, *, bug: str) -> list[SagaService]:
    """triage and fixer; ``bug`` picks the programming error fixer's step makes."""
    triage = Participant("triage", spec=BUGS)
    fixer = Participant("fixer", spec=BUGS)

    @triage.on_step("triage")
    async def do_triage(event: Opened, step: StepContext) -> Triaged:
        return Triaged(severity=len(event.title))

    @triage.on_compensation("triage")
    async def undo_triage(event: Any, step: StepContext) -> Untriaged:
        calls.append("undo")
        return Untriaged()

    @fixer.on_step("fix")
    async def fix(event: Triaged, step: StepContext) -> Any:
        calls.append("fix")
        if bug == "wrong_type":
            return Triaged(severity=1)
        if bug == "attribute":
            return Fixed(note=event.title)  # type: ignore[attr-defined,call-arg]
        if bug == "type":
            return Fixed(x=event.severity + "1")  # type: ignore[operator,call-arg]
        return Fixed()

    return [
        build_service(
            p,
            ParticipantSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/{p.name}.db"),
            configure_logs=False,
        )
        for p in (triage, fixer)
    ]


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


@pytest.mark.parametrize(
    ("bug", "summary"),
    [
        (
            "wrong_type",
            "step handler of 'fix' returned Triaged, expected Fixed (bug.fixed)",
        ),
        (
            "attribute",
            "step handler of 'fix' raised AttributeError: 'Triaged' object has no attribute "
            "'title' at test_handler_errors.py:",
        ),
        (
            "type",
            "step handler of 'fix' raised TypeError: unsupported operand type(s) for +: 'int' "
            "and 'str' at test_handler_errors.py:",
        ),
    ],
)
async def test_the_flow_harness_raises_a_programming_error_at_once(
    tmp_path: Path, bug: str, summary: str
) -> None:
    async with FlowHarness(services(tmp_path, bug=bug)) as flow:
        with pytest.raises(HandlerError) as raised:
            await flow.run(Opened(title="crash"))

    assert str(raised.value).startswith(f"handler_error: {summary}")
    # Once, not retried; and the saga was not cancelled: triage was never undone.
    assert calls == ["fix"]


async def test_a_programming_error_is_parked_with_its_summary_and_nothing_is_emitted(
    tmp_path: Path,
) -> None:
    _, fixer = services(tmp_path, bug="wrong_type")
    async with ParticipantHarness(fixer) as harness:
        start = harness.start_saga(Opened(title="crash"))
        triaged = harness.event_after(start, Triaged(severity=2), producer="triage", step="triage")
        with pytest.raises(HandlerError, match="returned Triaged, expected Fixed"):
            await harness.publish(triaged)

        assert harness.emitted == []
        assert [p.reason for p in harness.parked] == [
            "handler_error: step handler of 'fix' returned Triaged, expected Fixed (bug.fixed)"
        ]
    assert calls == ["fix"]
