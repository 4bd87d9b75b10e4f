"""Vetting: the first step. It only decides, so it has nothing to undo; when it refuses,
vetting itself ends the saga (nothing before it has a compensation)."""

from __future__ import annotations

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

from .contracts import LOAN_SAGA, LoanRequested, LoanVetted


class VettingSettings(ParticipantSettings, participant="vetting"):
    """``VETTING_LIMIT``: the largest loan paid out; ``VETTING_BLOCKED`` (JSON list)."""

    limit: Decimal = Decimal("250000.00")
    blocked: tuple[str, ...] = ("applicant-blocked",)


def create_service(settings: VettingSettings | None = None) -> SagaService:
    """The vetting service, on ``settings`` (default: the environment)."""
    settings = settings or VettingSettings()
    vetting = Participant("vetting", spec=LOAN_SAGA)

    @vetting.on_step("vet")
    async def vet(loan: LoanRequested, step: StepContext) -> LoanVetted:
        if loan.amount > settings.limit:
            raise BusinessFailure("over_limit", detail=f"the limit is {settings.limit}")
        if loan.applicant_id in settings.blocked:
            raise BusinessFailure("applicant_blocked")
        return LoanVetted(application=loan, score=700)

    return build_service(vetting, settings)


def create_app() -> FastStream:
    """``faststream run loan_flow.vetting:create_app --factory``."""
    return create_service().app
