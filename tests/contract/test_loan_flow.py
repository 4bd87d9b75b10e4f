"""The loan flow whole, in memory: every failure kind at every step and in every
compensation, each participant's state (and the bank's) checked undone."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from loan_flow import documents, ledger, payout, vetting
from loan_flow.bank import Bank
from loan_flow.contracts import LOAN_SAGA
from loan_flow.samples import Case, sample_loan
from sagakit import SagaService
from sagakit.testing import EffectProbe, Fault, FlowHarness, Injection, assert_all_or_nothing
from sqlalchemy import Table, func, select

STEPS = [step.name for step in LOAN_SAGA.steps]
UNDONE = [step.name for step in LOAN_SAGA.steps if step.has_compensation]


@pytest.fixture
def bank_ledger(tmp_path: Path) -> Path:
    return tmp_path / "bank.jsonl"


@pytest.fixture
def services(tmp_path: Path, bank_ledger: Path) -> list[SagaService]:
    def db(name: str) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/{name}.db"

    return [
        vetting.create_service(vetting.VettingSettings(database_url=db("vetting"))),
        ledger.create_service(ledger.LedgerSettings(database_url=db("ledger"))),
        documents.create_service(documents.DocumentsSettings(database_url=db("documents"))),
        payout.create_service(
            payout.PayoutSettings(database_url=db("payout"), bank_ledger=bank_ledger)
        ),
    ]


def rows(table: Table, status: str) -> EffectProbe:
    """How many rows of ``table`` hold ``status`` (one saga runs per test)."""

    async def probe(service: SagaService, saga_id: uuid.UUID) -> object:
        async with service.store.read() as session:
            query = select(func.count()).where(table.c.status == status)
            return (await session.execute(query)).scalar_one()

    return probe


def money_out(bank_ledger: Path) -> EffectProbe:
    """The transfers of the saga the bank still has out (not reversed)."""

    async def probe(service: SagaService, saga_id: uuid.UUID) -> object:
        transfers = Bank(bank_ledger).transfers()
        return [t.transfer_id for t in transfers if t.key == str(saga_id) and not t.reversed]

    return probe


@pytest.fixture
def effects(bank_ledger: Path) -> dict[str, EffectProbe]:
    return {
        "ledger": rows(ledger.loans, "booked"),
        "documents": rows(documents.contracts, "signed"),
        "payout": money_out(bank_ledger),
    }


@pytest.mark.parametrize("fault", list(Fault))
@pytest.mark.parametrize("fail_at", STEPS)
async def test_every_failure_kind_at_every_step_leaves_nothing_behind(
    services: list[SagaService], effects: dict[str, EffectProbe], fail_at: str, fault: Fault
) -> None:
    run = await assert_all_or_nothing(
        services, sample_loan(), fail_at=fail_at, fault=fault, effects=effects
    )

    cancelled = run.of_type("loan.cancelled")[0]
    assert cancelled.payload.reason == (
        "injected" if fault is Fault.BUSINESS else "retries_exhausted"
    )
    # Whoever finishes the backward path cancels: the failing step when nothing before it
    # has a compensation (vet, book), else ledger once it has unbooked the loan.
    assert cancelled.producer == ("vetting" if fail_at == "vet" else "ledger")
    assert run.effects == {"ledger": 0, "documents": 0, "payout": []}


@pytest.mark.parametrize("fault", [Fault.TRANSIENT, Fault.TIMEOUT])
@pytest.mark.parametrize("fail_at", STEPS)
async def test_a_failure_that_passes_is_retried_and_the_loan_is_paid_out(
    services: list[SagaService], effects: dict[str, EffectProbe], fail_at: str, fault: Fault
) -> None:
    async with FlowHarness(services, effects=effects) as flow:
        run = await flow.run(sample_loan(), fail_at=fail_at, fault=fault, times=2)

    run.assert_all_or_nothing()
    assert run.effects["ledger"] == run.effects["documents"] == 1
    # A retried payout reuses its key: the bank paid once.
    assert len(run.effects["payout"]) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", [Fault.TRANSIENT, Fault.TIMEOUT])
@pytest.mark.parametrize("undo", UNDONE)
async def test_a_compensation_that_fails_for_a_while_still_undoes_everything(
    services: list[SagaService], effects: dict[str, EffectProbe], undo: str, fault: Fault
) -> None:
    async with FlowHarness(services, effects=effects) as flow:
        run = await flow.run(
            sample_loan(),
            fail_at="disburse",
            inject=[Injection(undo, fault, times=3, compensation=True)],
        )

    run.assert_all_or_nothing()


@pytest.mark.parametrize("undo", UNDONE)
async def test_a_compensation_that_never_passes_is_parked_and_the_saga_does_not_end(
    services: list[SagaService], effects: dict[str, EffectProbe], undo: str
) -> None:
    async with FlowHarness(services, effects=effects) as flow:
        run = await flow.run(
            sample_loan(),
            fail_at="disburse",
            inject=[Injection(undo, Fault.TIMEOUT, compensation=True)],
        )

    assert not run.ended
    assert [p.reason.split(":")[0] for p in run.parked] == ["compensation_failed"]


CASES: list[tuple[Case, str | None, Callable[[list[str]], bool]]] = [
    (Case.DISBURSED, None, lambda out: len(out) == 1),
    (Case.OVER_LIMIT, "vet", lambda out: out == []),
    (Case.NO_FUNDS, "book", lambda out: out == []),
    (Case.CURRENCY, "sign", lambda out: out == []),
    (Case.HELD, "disburse", lambda out: out == []),
]


@pytest.mark.parametrize(("case", "failed", "paid"), CASES, ids=[c[0].value for c in CASES])
async def test_each_business_rule_ends_the_saga_all_or_nothing(
    services: list[SagaService],
    effects: dict[str, EffectProbe],
    bank_ledger: Path,
    case: Case,
    failed: str | None,
    paid: Callable[[list[str]], bool],
) -> None:
    async with FlowHarness(services, effects=effects) as flow:
        run = await flow.run(sample_loan(case))

    run.assert_all_or_nothing()
    assert run.failed_step == failed
    assert paid(run.effects["payout"])  # type: ignore[arg-type]
    if case is Case.HELD:
        # The bank did send the money; the undo payout registered took it back.
        [transfer] = Bank(bank_ledger).transfers()
        assert (transfer.status, transfer.reversed) == ("held", True)
