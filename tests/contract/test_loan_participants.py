"""The loan flow's four participants, each alone on an in-memory broker: the saga rules
through the conformance suite, and each one's own business rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from loan_flow import documents, ledger, payout, vetting
from loan_flow.bank import Bank
from loan_flow.contracts import LOAN_SAGA, LoanRequested
from loan_flow.samples import Case, sample_loan
from sagakit import EventPayload, SagaService
from sagakit.testing import ParticipantConformance, ParticipantHarness


class TestVettingKeepsTheSagaRules(ParticipantConformance):
    spec = LOAN_SAGA
    participant = "vetting"

    def create_service(self, database_url: str) -> SagaService:
        return vetting.create_service(vetting.VettingSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_loan()

    def sample_payloads(self) -> list[EventPayload]:
        return [sample_loan(), sample_loan(Case.OVER_LIMIT)]

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, LoanRequested)
        return [start.iban]


class TestLedgerKeepsTheSagaRules(ParticipantConformance):
    spec = LOAN_SAGA
    participant = "ledger"

    def create_service(self, database_url: str) -> SagaService:
        return ledger.create_service(ledger.LedgerSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_loan()

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, LoanRequested)
        return [start.iban]


class TestDocumentsKeepsTheSagaRules(ParticipantConformance):
    spec = LOAN_SAGA
    participant = "documents"

    def create_service(self, database_url: str) -> SagaService:
        return documents.create_service(documents.DocumentsSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_loan()

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, LoanRequested)
        return [start.iban]


class TestPayoutKeepsTheSagaRules(ParticipantConformance):
    spec = LOAN_SAGA
    participant = "payout"

    def create_service(self, database_url: str) -> SagaService:
        folder = database_url.removeprefix("sqlite+aiosqlite:///").rsplit("/", 1)[0]
        settings = payout.PayoutSettings(
            database_url=database_url, bank_ledger=Path(folder) / "bank.jsonl"
        )
        return payout.create_service(settings)

    def start_payload(self) -> EventPayload:
        return sample_loan()

    def saga_data(self) -> dict[str, Any]:
        return {"loan_id": "loan-1"}  # what ledger adds

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, LoanRequested)
        return [start.iban]


@pytest.fixture
async def ledger_harness(tmp_path: Path) -> AsyncIterator[ParticipantHarness]:
    settings = ledger.LedgerSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db", funds=Decimal("2000.00")
    )
    async with ParticipantHarness(ledger.create_service(settings)) as harness:
        yield harness


async def test_vetting_refuses_a_loan_over_its_limit_and_ends_the_saga(tmp_path: Path) -> None:
    service = vetting.create_service(
        vetting.VettingSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/v.db")
    )
    async with ParticipantHarness(service) as harness:
        await harness.publish(harness.start_saga(sample_loan(Case.OVER_LIMIT)))

    # Nothing before vet has a compensation: vetting itself announces the cancellation.
    assert harness.emitted_types == ["vetting.failed", "loan.cancelled"]
    cancelled = harness.emitted[1].payload
    assert (cancelled.failed_step, cancelled.reason) == ("vet", "over_limit")


async def test_ledger_books_within_its_funds_and_adds_the_loan_to_the_saga(
    ledger_harness: ParticipantHarness,
) -> None:
    first = ledger_harness.start_saga(sample_loan())
    await ledger_harness.publish(ledger_harness.event("loan.vetted", after=first, score=700))
    second = ledger_harness.start_saga(sample_loan())
    await ledger_harness.publish(ledger_harness.event("loan.vetted", after=second, score=700))

    # vet had no effect: ledger, the first step with one, ends a saga it fails.
    assert ledger_harness.emitted_types == ["loan.booked", "ledger.failed", "loan.cancelled"]
    booked, refused, _ = ledger_harness.emitted
    assert booked.context.data == {"loan_id": booked.payload.loan_id}
    assert refused.payload.reason == "insufficient_funds"


async def test_ledger_unbooks_the_loan_its_step_booked(
    ledger_harness: ParticipantHarness,
) -> None:
    start = ledger_harness.start_saga(sample_loan())
    vetted = ledger_harness.event("loan.vetted", after=start, score=700)
    await ledger_harness.publish(vetted)
    booked = ledger_harness.emitted[0]
    failed = ledger_harness.event("documents.failed", after=booked, reason="nope")
    await ledger_harness.publish(failed)
    # The funds are free again: another loan of the same size is booked.
    again = ledger_harness.start_saga(sample_loan())
    await ledger_harness.publish(ledger_harness.event("loan.vetted", after=again, score=700))

    assert ledger_harness.emitted_types == [
        "loan.booked",
        "loan.unbooked",
        "loan.cancelled",
        "loan.booked",
    ]


async def test_payout_reverses_a_transfer_the_bank_holds(tmp_path: Path) -> None:
    bank_ledger = tmp_path / "bank.jsonl"
    settings = payout.PayoutSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db", bank_ledger=bank_ledger
    )
    async with ParticipantHarness(payout.create_service(settings)) as harness:
        start = harness.start_saga(sample_loan(Case.HELD), data={"loan_id": "loan-1"})
        signed = harness.event("contract.signed", after=start, contract_id="c-1")
        await harness.publish(signed)

    assert harness.emitted_types == ["payout.failed"]
    assert harness.emitted[0].payload.reason == "held_for_review"
    [transfer] = Bank(bank_ledger).transfers()
    assert (transfer.status, transfer.reversed) == ("held", True)
