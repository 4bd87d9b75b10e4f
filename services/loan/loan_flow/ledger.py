"""Ledger: books the loan against the lending funds; unbooks it on the backward path."""

from __future__ import annotations

import uuid
from decimal import Decimal

from faststream import FastStream
from sagakit import (
    BusinessFailure,
    Participant,
    ParticipantSettings,
    SagaService,
    StepContext,
    build_service,
)
from sqlalchemy import Column, MetaData, Numeric, String, Table, func, insert, select, update

from .contracts import LOAN_SAGA, LoanBooked, LoanVetted

tables = MetaData()
loans = Table(
    "loans",
    tables,
    Column("loan_id", String(36), primary_key=True),
    Column("saga_id", String(36), nullable=False, unique=True),
    Column("amount", Numeric(14, 2), nullable=False),
    Column("status", String(10), nullable=False),
)
_LENT = select(func.coalesce(func.sum(loans.c.amount), 0)).where(loans.c.status == "booked")
_BOOK = insert(loans)
_UNBOOK = update(loans).values(status="unbooked")


class LedgerSettings(ParticipantSettings, participant="ledger"):
    """``LEDGER_FUNDS``: how much may be lent out at once."""

    funds: Decimal = Decimal("100000.00")


def create_service(settings: LedgerSettings | None = None) -> SagaService:
    """The ledger service, on ``settings`` (default: the environment)."""
    settings = settings or LedgerSettings()
    ledger = Participant("ledger", spec=LOAN_SAGA, tables=tables)

    @ledger.on_step("book")
    async def book(vetted: LoanVetted, step: StepContext) -> LoanBooked:
        amount = vetted.application.amount
        if Decimal((await step.execute(_LENT)).one()[0]) + amount > settings.funds:
            raise BusinessFailure("insufficient_funds")
        loan_id = str(uuid.uuid4())
        row = {"loan_id": loan_id, "saga_id": str(step.saga_id), "amount": amount}
        await step.execute(_BOOK, {**row, "status": "booked"})
        step.add_data(loan_id=loan_id)  # payout records it with the transfer
        return LoanBooked(application=vetted.application, loan_id=loan_id)

    @ledger.on_compensation("book")
    async def unbook(booked: LoanBooked, step: StepContext) -> None:
        await step.execute(_UNBOOK.where(loans.c.loan_id == booked.loan_id))

    return build_service(ledger, settings)


def create_app() -> FastStream:
    """``faststream run loan_flow.ledger:create_app --factory``."""
    return create_service().app
