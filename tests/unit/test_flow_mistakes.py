"""Each mistake a new user met writing a flow (issue #15) is caught when the spec is built,
by ``saga check`` or at start-up, with a message that says what to change; or it can no
longer be made. One test per mistake, on the loan flow."""

from __future__ import annotations

import sys
import uuid
from types import ModuleType
from typing import Any, ClassVar

import pytest
from loan_flow import ledger, payout
from loan_flow.contracts import LOAN_SAGA, LoanEvent
from sagakit import (
    EventPayload,
    FailureEvent,
    HandlerError,
    Participant,
    SagaContext,
    SagaSpec,
    SpecError,
    StepContext,
    build_service,
)
from sagakit.cli import app, load_plugins
from sagakit.runtime import StepRun
from sagakit.spec import check_choreography
from typer.testing import CliRunner


def respec(**changes: Any) -> SagaSpec:
    """LOAN_SAGA with some fields replaced, built (and checked) anew."""
    fields = {name: getattr(LOAN_SAGA, name) for name in SagaSpec.model_fields}
    return SagaSpec(**{**fields, **changes})


def with_event(model: type[EventPayload]) -> dict[str, Any]:
    return {"events": {**LOAN_SAGA.events, model.event_type: model}}


def with_step(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "steps": tuple(
            s.model_copy(update=changes) if s.name == name else s for s in LOAN_SAGA.steps
        )
    }


def test_a_failure_event_without_reason_and_detail_is_refused() -> None:
    class PayoutFailed(LoanEvent):  # forgot to extend FailureEvent: the reason was lost
        event_type: ClassVar[str] = "payout.failed"

    with pytest.raises(
        SpecError,
        match=r"PayoutFailed .payout.failed, the failure of step "
        r"disburse. has no field 'reason': sagakit fills it when it builds the "
        r"event; extend sagakit.FailureEvent",
    ):
        respec(**with_event(PayoutFailed))


def test_a_system_event_with_a_field_sagakit_cannot_fill_is_refused() -> None:
    # It made sagakit's own ValidationError look transient: ~26 runs, then "expired".
    class PayoutFailed(FailureEvent, LoanEvent):
        event_type: ClassVar[str] = "payout.failed"
        bank_code: str

    with pytest.raises(
        SpecError,
        match="requires the field 'bank_code', which sagakit cannot "
        "fill when it builds the event: give 'bank_code' a default",
    ):
        respec(**with_event(PayoutFailed))


def test_saga_check_refuses_such_a_spec_instead_of_saying_no_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class PayoutFailed(FailureEvent, LoanEvent):
        event_type: ClassVar[str] = "payout.failed"
        bank_code: str

    flow = ModuleType("mistaken_loans")
    monkeypatch.setitem(sys.modules, "mistaken_loans", flow)
    monkeypatch.setattr(
        flow, "__getattr__", lambda name: respec(**with_event(PayoutFailed)), raising=False
    )
    load_plugins()

    result = CliRunner().invoke(app, ["check", "--spec", "mistaken_loans:SPEC"])

    assert result.exit_code == 1
    assert "the spec is refused" in result.output
    assert "give 'bank_code' a default" in result.output


def test_the_last_step_declaring_a_compensation_is_refused() -> None:
    # The checker used to advise it, then accept a handler nothing ever triggered.
    with pytest.raises(
        SpecError,
        match=r"step disburse .payout. declares the compensated event "
        r"contract.voided, but no later step can fail, so nothing would ever undo "
        r"it: remove compensated .an effect outside the database is undone by an "
        r"undo the step registers itself, StepContext.undo.",
    ):
        respec(**with_step("disburse", compensated="contract.voided"))


def test_a_compensation_registered_for_a_step_without_one_is_refused() -> None:
    participant = Participant("payout", spec=LOAN_SAGA)

    with pytest.raises(
        SpecError,
        match="nothing would ever call this compensation: give the "
        "step a compensated event in the spec",
    ):
        participant.on_compensation("disburse")


def test_a_first_step_without_an_effect_is_no_longer_a_mistake() -> None:
    # It broke every backward path (six gaps, no rule stated); now whoever finishes the
    # backward path cancels: vetting on its own failure, ledger once it has unbooked.
    assert not LOAN_SAGA.steps[0].has_compensation
    assert check_choreography(LOAN_SAGA) == []


def test_compensate_on_need_not_be_written_and_a_wrong_one_is_a_gap() -> None:
    assert LOAN_SAGA.step("book").compensate_on == ("documents.failed", "contract.voided")
    spec = respec(**with_step("book", compensate_on=("documents.failed",)))

    assert next(g.message for g in check_choreography(spec)) == (
        "step book (ledger) has an effect to undo, but its compensate_on leaves out "
        "contract.voided, the compensated event of the later step sign: add it, or leave "
        "compensate_on out to have it derived"
    )


def test_a_step_with_an_effect_and_no_compensation_handler_is_refused_at_start_up() -> None:
    participant = Participant("ledger", spec=LOAN_SAGA, tables=ledger.tables)

    @participant.on_step("book")
    async def book(event: Any, step: StepContext) -> Any: ...

    with pytest.raises(
        SpecError,
        match=r"'ledger' has no compensation for 'book': register one "
        r"with @ledger.on_compensation\('book'\)",
    ):
        build_service(participant, configure_logs=False)


def test_an_undo_the_participant_does_not_know_is_refused() -> None:
    # It is found again by name when the step is compensated, maybe after a restart.
    participant = payout.create_service().runtime.participant
    step = StepContext(
        transaction=None,  # type: ignore[arg-type]
        saga=SagaContext.start("loan_disbursement"),
        event_id=uuid.uuid4(),
        event_type="contract.signed",
        run=StepRun(undo_functions=participant.undo_functions),
    )

    async def cancel_transfer(key: str) -> None: ...

    with pytest.raises(
        HandlerError,
        match=r"step.undo\(cancel_transfer\): register it first "
        r"with @<participant>.undo",
    ):
        step.undo(cancel_transfer, key="k")


def test_the_name_written_twice_must_agree() -> None:
    # Participant("flights"), service_name and env_prefix were three names, unchecked.
    participant = ledger.create_service().runtime.participant

    with pytest.raises(
        SpecError,
        match="PayoutSettings are the settings of 'payout', not of the participant 'ledger'",
    ):
        build_service(participant, payout.PayoutSettings(), configure_logs=False)


def test_a_reaction_is_registered_by_its_name_not_its_event() -> None:
    # on_event read as "on any event"; on_reaction names what the spec declares.
    with pytest.raises(
        SpecError,
        match=r"the spec gives 'ledger' no reaction 'loan.cancelled' "
        r"\(its reactions: none\)",
    ):
        Participant("ledger", spec=LOAN_SAGA).on_reaction("loan.cancelled")
