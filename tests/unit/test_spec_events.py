"""The spec refuses, when it is built, any event sagakit would have to build but could not."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import ClassVar

import pytest
from pydantic import BaseModel
from sagakit import (
    CancelledEvent,
    CompensatedEvent,
    EventPayload,
    FailureEvent,
    SagaSpec,
    SpecError,
    StepSpec,
)
from sagakit.cli import app, load_plugins
from typer.testing import CliRunner


class Ticket(BaseModel):
    ticket_id: str


class Opened(Ticket, EventPayload):
    event_type: ClassVar[str] = "ticket.opened"


class Carried(EventPayload):
    ticket: Ticket


class Booked(Carried):
    event_type: ClassVar[str] = "desk.booked"


class BookFailed(Carried, FailureEvent):
    event_type: ClassVar[str] = "desk.failed"


class Unbooked(Carried, CompensatedEvent):
    event_type: ClassVar[str] = "desk.unbooked"


class Closed(Carried):
    event_type: ClassVar[str] = "ticket.closed"


class CloseFailed(Carried, FailureEvent):
    event_type: ClassVar[str] = "closer.failed"


class Cancelled(Carried, CancelledEvent):
    event_type: ClassVar[str] = "ticket.cancelled"


MODELS: list[type[EventPayload]] = [
    Opened,
    Booked,
    BookFailed,
    Unbooked,
    Closed,
    CloseFailed,
    Cancelled,
]


def spec_with(*models: type[EventPayload], start_field: str | None = "ticket") -> SagaSpec:
    """A two-step flow with ``models`` in place of the ones of the same event type."""
    events = {m.event_type: m for m in MODELS}
    events.update({m.event_type: m for m in models})
    return SagaSpec(
        saga_type="ticket",
        exchange="tickets",
        start_event="ticket.opened",
        completed_event="ticket.closed",
        cancelled_event="ticket.cancelled",
        start_field=start_field,
        steps=(
            StepSpec(
                name="book",
                participant="desk",
                trigger="ticket.opened",
                success="desk.booked",
                failure="desk.failed",
                compensated="desk.unbooked",
            ),
            StepSpec(
                name="close",
                participant="closer",
                trigger="desk.booked",
                success="ticket.closed",
                failure="closer.failed",
            ),
        ),
        events=events,
    )


def test_a_flow_built_on_the_bases_is_accepted() -> None:
    assert spec_with().step("book").compensate_on == ("closer.failed",)


def test_a_failure_event_without_a_reason_is_refused() -> None:
    # Mistake: sagakit filled reason/detail by field name; a model without them lost both.
    class Refused(Carried):
        event_type: ClassVar[str] = "closer.failed"

    with pytest.raises(SpecError) as refused:
        spec_with(Refused)

    assert str(refused.value) == (
        "ticket: 2 events sagakit cannot build:\n"
        "- Refused (closer.failed, the failure of step close) has no field 'reason': sagakit "
        "fills it when it builds the event; extend sagakit.FailureEvent\n"
        "- Refused (closer.failed, the failure of step close) has no field 'detail': sagakit "
        "fills it when it builds the event; extend sagakit.FailureEvent"
    )


def test_a_failure_event_with_a_field_sagakit_cannot_fill_is_refused() -> None:
    # Mistake: another required field made sagakit's own ValidationError look transient.
    class Refused(Carried, FailureEvent):
        event_type: ClassVar[str] = "closer.failed"
        retry_after: int

    with pytest.raises(SpecError) as refused:
        spec_with(Refused)

    assert str(refused.value) == (
        "ticket: Refused (closer.failed, the failure of step close) requires the field "
        "'retry_after', which sagakit cannot fill when it builds the event: give "
        "'retry_after' a default (sagakit fills only reason, detail, ticket)"
    )


def test_a_compensated_event_with_a_required_field_is_refused() -> None:
    # A no-op compensation is announced from the carried payload alone.
    class Refused(Carried, CompensatedEvent):
        event_type: ClassVar[str] = "desk.unbooked"
        desk_id: str

    with pytest.raises(
        SpecError,
        match=r"Refused .desk.unbooked, the compensated event of step "
        r"book. requires the field 'desk_id'.*give 'desk_id' a default",
    ):
        spec_with(Refused)


def test_a_cancelled_event_that_cannot_name_the_failed_step_is_refused() -> None:
    class Refused(Carried):
        event_type: ClassVar[str] = "ticket.cancelled"
        why: str

    with pytest.raises(SpecError) as refused:
        spec_with(Refused)

    message = str(refused.value)
    assert "Refused (ticket.cancelled, the cancelled event) has no field 'failed_step'" in message
    assert "has no field 'reason'" in message
    assert "requires the field 'why'" in message
    assert "extend sagakit.CancelledEvent" in message


def test_a_carried_field_of_another_type_than_the_start_event_is_refused() -> None:
    class Other(BaseModel):
        other_id: str

    class Refused(FailureEvent):
        event_type: ClassVar[str] = "closer.failed"
        ticket: Other

    with pytest.raises(
        SpecError,
        match="its field 'ticket' is a Other, but sagakit fills it with the start event Opened",
    ):
        spec_with(Refused)


def test_a_required_carried_field_the_cause_does_not_carry_is_refused() -> None:
    class Bare(EventPayload):
        event_type: ClassVar[str] = "desk.booked"

    with pytest.raises(
        SpecError,
        match=r"requires 'ticket', which sagakit copies from "
        r"desk.booked, but Bare has no field 'ticket': add it",
    ):
        spec_with(Bare)


def test_a_required_field_sagakit_would_have_to_fill_without_a_start_field() -> None:
    with pytest.raises(SpecError, match="requires the field 'ticket'"):
        spec_with(start_field=None)


def test_saga_check_refuses_a_spec_it_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refused(Carried):
        event_type: ClassVar[str] = "closer.failed"
        reason: str
        detail: str = ""
        code: int

    flow = ModuleType("unbuildable_flow")
    monkeypatch.setitem(sys.modules, "unbuildable_flow", flow)
    monkeypatch.setattr(flow, "__getattr__", lambda name: spec_with(Refused), raising=False)
    load_plugins()

    result = CliRunner().invoke(app, ["check", "--spec", "unbuildable_flow:SPEC"])

    assert result.exit_code == 1
    assert result.output.startswith(
        "the spec is refused: ticket: Refused (closer.failed, the failure of step close) "
        "requires the field 'code'"
    )
