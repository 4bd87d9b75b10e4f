"""Payout: the last step. It pays the loan out through the bank, outside its database, so it
registers the undo (a reversal) before it calls the bank: if the step then fails in any way
(the bank holds the transfer, the database is away, a timeout), sagakit reverses it."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream
from sagakit import (
    BusinessFailure,
    Participant,
    ParticipantSettings,
    SagaService,
    StepContext,
    build_service,
)
from sqlalchemy import Column, MetaData, String, Table, insert

from .bank import Bank
from .contracts import LOAN_SAGA, ContractSigned, LoanDisbursed

tables = MetaData()
payouts = Table(
    "payouts",
    tables,
    Column("saga_id", String(36), primary_key=True),
    Column("transfer_id", String(36), nullable=False),
    Column("loan_id", String(36), nullable=False),
)
_RECORD = insert(payouts)


class PayoutSettings(ParticipantSettings, participant="payout"):
    """``PAYOUT_BANK_LEDGER``: the bank's file; ``PAYOUT_HELD_COUNTRIES`` (JSON list)."""

    bank_ledger: Path = Path("var/bank.jsonl")
    held_countries: tuple[str, ...] = ("XX",)


def create_service(settings: PayoutSettings | None = None) -> SagaService:
    """The payout service, on ``settings`` (default: the environment)."""
    settings = settings or PayoutSettings()
    payout = Participant("payout", spec=LOAN_SAGA, tables=tables)
    bank = Bank(settings.bank_ledger, held_countries=frozenset(settings.held_countries))

    @payout.undo
    async def reverse_transfer(key: str) -> None:
        bank.reverse(key)

    @payout.on_step("disburse")
    async def disburse(signed: ContractSigned, step: StepContext) -> LoanDisbursed:
        loan, key = signed.application, str(step.saga_id)
        step.undo(reverse_transfer, key=key)  # before the call: a crash after it is covered
        transfer = bank.transfer(key=key, iban=loan.iban, amount=loan.amount)
        if transfer.status == "held":
            raise BusinessFailure("held_for_review", detail="the bank holds the transfer")
        # The loan's id comes in the saga's data, where ledger added it.
        row = {"saga_id": key, "transfer_id": transfer.transfer_id, "loan_id": step.data["loan_id"]}
        await step.execute(_RECORD, row)
        return LoanDisbursed(application=loan, transfer_id=transfer.transfer_id)

    return build_service(payout, settings)


def create_app() -> FastStream:
    """``faststream run loan_flow.payout:create_app --factory``."""
    return create_service().app
