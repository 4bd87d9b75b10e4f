"""Documents: draws up and signs the loan contract; voids it on the backward path."""

from __future__ import annotations

import uuid

from faststream import FastStream
from sagakit import (
    BusinessFailure,
    Participant,
    ParticipantSettings,
    SagaService,
    StepContext,
    build_service,
)
from sqlalchemy import Column, MetaData, String, Table, insert, update

from .contracts import LOAN_SAGA, ContractSigned, LoanBooked

tables = MetaData()
contracts = Table(
    "contracts",
    tables,
    Column("contract_id", String(36), primary_key=True),
    Column("loan_id", String(36), nullable=False),
    Column("status", String(10), nullable=False),
)
_SIGN = insert(contracts)
_VOID = update(contracts).values(status="voided")


class DocumentsSettings(ParticipantSettings, participant="documents"):
    """``DOCUMENTS_CURRENCIES`` (JSON list): the currencies a contract may be written in."""

    currencies: tuple[str, ...] = ("EUR", "GBP", "USD")


def create_service(settings: DocumentsSettings | None = None) -> SagaService:
    """The documents service, on ``settings`` (default: the environment)."""
    settings = settings or DocumentsSettings()
    documents = Participant("documents", spec=LOAN_SAGA, tables=tables)

    @documents.on_step("sign")
    async def sign(booked: LoanBooked, step: StepContext) -> ContractSigned:
        if booked.application.currency not in settings.currencies:
            raise BusinessFailure("currency_not_supported")
        contract_id = str(uuid.uuid4())
        row = {"contract_id": contract_id, "loan_id": booked.loan_id, "status": "signed"}
        await step.execute(_SIGN, row)
        return ContractSigned(application=booked.application, contract_id=contract_id)

    @documents.on_compensation("sign")
    async def void(signed: ContractSigned, step: StepContext) -> None:
        await step.execute(_VOID.where(contracts.c.contract_id == signed.contract_id))

    return build_service(documents, settings)


def create_app() -> FastStream:
    """``faststream run loan_flow.documents:create_app --factory``."""
    return create_service().app
