"""The loan-disbursement flow: its events and its spec, written down once."""

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, Field
from sagakit import CancelledEvent, CompensatedEvent, EventPayload, FailureEvent, SagaSpec, StepSpec
from sagakit.spec import event_models


class Application(BaseModel):
    """What the applicant asked for."""

    application_id: str = Field(min_length=1, max_length=100)
    applicant_id: str = Field(min_length=1, max_length=100)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    iban: str = Field(pattern=r"^[A-Z]{2}[0-9A-Z]{10,32}$")


class LoanRequested(Application, EventPayload):
    """The start event: a client asks for a loan to be paid out."""

    event_type: ClassVar[str] = "loan.requested"


class LoanEvent(EventPayload):
    """Every later event holds the application (the spec's ``start_field``)."""

    application: Application


class LoanVetted(LoanEvent):
    event_type: ClassVar[str] = "loan.vetted"
    score: int


class LoanBooked(LoanEvent):
    event_type: ClassVar[str] = "loan.booked"
    loan_id: str


class ContractSigned(LoanEvent):
    event_type: ClassVar[str] = "contract.signed"
    contract_id: str


class LoanDisbursed(LoanEvent):
    event_type: ClassVar[str] = "loan.disbursed"
    transfer_id: str


# The events sagakit builds itself: each extends the base that says what sagakit fills.
class VettingFailed(FailureEvent, LoanEvent):
    event_type: ClassVar[str] = "vetting.failed"


class LedgerFailed(FailureEvent, LoanEvent):
    event_type: ClassVar[str] = "ledger.failed"


class DocumentsFailed(FailureEvent, LoanEvent):
    event_type: ClassVar[str] = "documents.failed"


class PayoutFailed(FailureEvent, LoanEvent):
    event_type: ClassVar[str] = "payout.failed"


class LoanUnbooked(CompensatedEvent, LoanEvent):
    event_type: ClassVar[str] = "loan.unbooked"


class ContractVoided(CompensatedEvent, LoanEvent):
    event_type: ClassVar[str] = "contract.voided"


class LoanCancelled(CancelledEvent, LoanEvent):
    event_type: ClassVar[str] = "loan.cancelled"


def _step(name: str, participant: str, trigger: str, success: str, undone: str = "") -> StepSpec:
    """A step whose failure event is ``<participant>.failed``."""
    return StepSpec(
        name=name,
        participant=participant,
        trigger=trigger,
        success=success,
        failure=f"{participant}.failed",
        compensated=undone or None,
    )


LOAN_SAGA = SagaSpec(
    saga_type="loan_disbursement",
    exchange="loans",
    start_event="loan.requested",
    completed_event="loan.disbursed",
    cancelled_event="loan.cancelled",
    start_field="application",
    steps=(
        # vet has nothing to undo; disburse registers its own undo (outside its database).
        _step("vet", "vetting", "loan.requested", "loan.vetted"),
        _step("book", "ledger", "loan.vetted", "loan.booked", undone="loan.unbooked"),
        _step("sign", "documents", "loan.booked", "contract.signed", undone="contract.voided"),
        _step("disburse", "payout", "contract.signed", "loan.disbursed"),
    ),
    events=event_models(
        LoanRequested,
        LoanVetted,
        LoanBooked,
        ContractSigned,
        LoanDisbursed,
        VettingFailed,
        LedgerFailed,
        DocumentsFailed,
        PayoutFailed,
        LoanUnbooked,
        ContractVoided,
        LoanCancelled,
    ),
)
