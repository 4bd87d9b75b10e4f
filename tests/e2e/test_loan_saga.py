"""The loan flow end to end: real RabbitMQ, each participant its own process, SQLite stores,
and the stand-in bank's ledger file: a loan paid out, each business rule's backward path,
and a transfer the bank holds taken back by the undo payout registered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from loan_flow.bank import Bank
from loan_flow.contracts import LOAN_SAGA
from loan_flow.samples import Case, sample_loan
from sagakit import Envelope
from sagakit.client import EventWatch, SagaClient
from sagakit.testing import ServiceProcesses
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .conftest import event_types

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

PARTICIPANTS = ("vetting", "ledger", "documents", "payout")


class LoanSystem:
    def __init__(self, client: SagaClient, watch: EventWatch, directory: Path) -> None:
        self.client = client
        self.watch = watch
        self.directory = directory
        self.bank = Bank(directory / "bank.jsonl")

    async def run(self, case: Case) -> list[Envelope[Any]]:
        started = await self.client.start(sample_loan(case))
        return await self.watch.wait_for_end(started.context.saga_id, timeout=20)

    async def rows(self, service: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{self.directory}/{service}.db")
        try:
            async with engine.connect() as connection:
                return [
                    dict(row) for row in (await connection.execute(text(sql), params)).mappings()
                ]
        finally:
            await engine.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loan_system(
    module_broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LoanSystem]:
    directory = tmp_path_factory.mktemp("loan")
    services = {p: (p, f"loan_flow.{p}:create_app") for p in PARTICIPANTS}
    service_env = {
        p: {f"{p.upper()}_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/{p}.db"}
        for p in PARTICIPANTS
    }
    service_env["payout"]["PAYOUT_BANK_LEDGER"] = str(directory / "bank.jsonl")
    procs = ServiceProcesses(
        services,
        spec=LOAN_SAGA,
        url=module_broker_url,
        log_dir=directory,
        service_env=service_env,
        grace=5.0,
    )
    async with (
        procs,
        SagaClient(module_broker_url, LOAN_SAGA, producer="e2e-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=60)
        yield LoanSystem(client, watch, directory)


async def test_a_loan_is_paid_out(loan_system: LoanSystem) -> None:
    events = await loan_system.run(Case.DISBURSED)

    assert event_types(events) == [
        "loan.requested",
        "loan.vetted",
        "loan.booked",
        "contract.signed",
        "loan.disbursed",
    ]
    saga = str(events[0].context.saga_id)
    [row] = await loan_system.rows("payout", "SELECT * FROM payouts WHERE saga_id = :s", s=saga)
    # The loan id came to payout in the saga's data, where ledger added it.
    assert row["loan_id"] == events[2].payload.loan_id == events[-1].context.data["loan_id"]
    assert [t.status for t in loan_system.bank.transfers() if t.key == saga] == ["sent"]


@pytest.mark.parametrize(
    ("case", "expected", "canceller"),
    [
        (Case.OVER_LIMIT, ["vetting.failed"], "vetting"),
        (Case.NO_FUNDS, ["loan.vetted", "ledger.failed"], "ledger"),
        (
            Case.CURRENCY,
            ["loan.vetted", "loan.booked", "documents.failed", "loan.unbooked"],
            "ledger",
        ),
        (
            Case.HELD,
            [
                "loan.vetted",
                "loan.booked",
                "contract.signed",
                "payout.failed",
                "contract.voided",
                "loan.unbooked",
            ],
            "ledger",
        ),
    ],
)
async def test_a_refused_loan_is_undone_and_cancelled_by_whoever_ends_the_path(
    loan_system: LoanSystem, case: Case, expected: list[str], canceller: str
) -> None:
    events = await loan_system.run(case)

    assert event_types(events) == ["loan.requested", *expected, "loan.cancelled"]
    assert events[-1].producer == canceller
    assert events[-1].payload.reason == case.value
    saga = str(events[0].context.saga_id)
    booked = await loan_system.rows("ledger", "SELECT status FROM loans WHERE saga_id = :s", s=saga)
    assert booked in ([], [{"status": "unbooked"}])
    if case is Case.HELD:
        [transfer] = [t for t in loan_system.bank.transfers() if t.key == saga]
        assert (transfer.status, transfer.reversed) == ("held", True)


async def test_sagas_in_parallel_all_end(loan_system: LoanSystem) -> None:
    cases = [Case.DISBURSED, Case.HELD, Case.CURRENCY, Case.OVER_LIMIT] * 3
    ends = await asyncio.gather(*(loan_system.run(case) for case in cases))

    assert [e[-1].event_type for e in ends] == [
        "loan.disbursed" if case is Case.DISBURSED else "loan.cancelled" for case in cases
    ]
