"""The fault matrix (issue #12): every saga ends under infrastructure faults and hostile input.

Each case runs the four participants as processes on the real broker, with a system of its
own (a virtual host, stores, a ledger), starts about fifty sagas around its fault, and then
audits the wire, every store and the dead-letter queues (see ``_matrix.py``):

- a payment PostgreSQL outage of 5 s, 30 s and 120 s (a private cluster stopped with
  ``-m immediate``), meeting sagas at payment's step and at its compensation;
- shipping's SQLite on a full volume, and inventory's on a read-only one, for 20 s, also
  meeting sagas at the step and at the compensation;
- poison headers: a start event with as many headers as a frame takes and an invalid saga
  id, and a valid one as crowded; the services' connections must never close;
- amplification: a 262,000-byte start event padded in ``context.steps[0].reason``; and, on
  services with a small size limit, a valid start event just under it whose next event
  would be over it;
- conflicting duplicates (an event id again with another body) beside exact ones;
- strangers' backward events: every failure and compensation event for a saga nobody
  started.

Independent cases run at once (``SAGAKIT_FAULTS_CONCURRENCY``, default 4 systems), longest
first; selecting one case (``-k``) runs that one alone. A summary of every case (verdicts,
evidence, time) goes to ``summary.json`` in the session's temporary directory, and to
``$SAGAKIT_FAULTS_SUMMARY`` when set.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import pytest_asyncio
from order_contracts import OrderCreated
from order_contracts.samples import Scenario, sample_order
from sagakit.client import SagaClient
from sagakit_chaos import (
    ANY_STEP,
    MAX_MESSAGE_BYTES,
    Hostile,
    Placement,
    PlannedOrder,
    Seen,
    StoreFault,
    amplified_start,
    backward_events,
    conflicting_copy,
    crowded_headers,
    largest_order,
    poison_start,
    stranger_backward,
)
from sagakit_lab import ClusterError, SmallVolume, VolumeUnavailable, postgres_bin_dir

from tests.brokers import unavailable

from ._matrix import (
    PARTICIPANTS,
    SPEC,
    CaseResult,
    FaultSystem,
    Readiness,
    broker_connections,
)
from .conftest import MATRIX_SUMMARY

pytestmark = [
    pytest.mark.faults,
    pytest.mark.asyncio(loop_scope="module"),
    # Cases run at once; a test waits for its own, which may wait for a free slot.
    pytest.mark.timeout(1200),
]

SETTLE_SECONDS = 240.0


# -- store faults --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreCase:
    """A participant's store fails for ``seconds`` while sagas are at its step and at its
    compensation.

    ``held`` (the next participant) is frozen before the fault, so that sagas pile up past
    ``target`` with orders (``comeback``) that fail later and come back to ``target`` to be
    undone once it is let go, at the moment the fault starts.
    """

    target: str
    fault: StoreFault
    placement: Placement
    seconds: float
    held: str
    comeback: tuple[Scenario, ...]


def payment_outage(seconds: float) -> StoreCase:
    """Payment's PostgreSQL away: charges wait, and refunds of orders shipping refuses or
    notification cannot confirm."""
    return StoreCase(
        "payment",
        "store_outage",
        "cluster",
        seconds,
        held="shipping",
        comeback=(Scenario.NOT_SERVED, Scenario.UNREACHABLE),
    )


# Longest first: cases start in this order.
STORE_CASES: dict[str, StoreCase] = {
    "store_outage_120s": payment_outage(120),
    "store_outage_30s": payment_outage(30),
    "disk_full": StoreCase(
        "shipping", "disk_full", "volume", 20, held="notification", comeback=(Scenario.UNREACHABLE,)
    ),
    "read_only_store": StoreCase(
        "inventory",
        "read_only",
        "volume",
        20,
        held="payment",
        comeback=(Scenario.CARD_DECLINED, Scenario.NOT_SERVED),
    ),
    "store_outage_5s": payment_outage(5),
}


async def store_fault(system: FaultSystem, case: StoreCase, result: CaseResult) -> None:
    [step] = [s for s in SPEC.steps if s.participant == case.target]
    await system.start_many(10)  # the stores warm, before anything happens
    if not await system.settle(within=120):
        result.problems.append("the warm-up sagas did not end")
    system.hold(case.held)
    piled = await system.start_many(12, scenarios=case.comeback)
    piled += await system.start_many(4, scenarios=[Scenario.FULFILLED])
    late = await system.wait_until(piled, lambda types: step.success in types, within=90)
    if late:
        result.problems.append(f"{len(late)} sagas never got past {case.target} before the fault")
    readiness = Readiness(system.health_ports[case.target])
    readiness.start()
    began = time.monotonic()
    done = await system.stores.begin(case.fault, case.target)
    system.release(case.held)
    await system.start_many(24, over=min(5.0, case.seconds / 2))
    await asyncio.sleep(max(0.0, began + case.seconds - time.monotonic()))
    at_step, at_compensation = system.waiting_at(case.target)
    ended = time.monotonic()
    await system.stores.end(case.fault, case.target)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append(f"not every saga ended within {SETTLE_SECONDS:g}s of the fault")
    after = await readiness.status()
    await readiness.stop()
    during = readiness.statuses(began, ended)
    result.evidence.update(
        fault=f"{done} for {ended - began:.1f}s",
        waiting_at_step_when_it_ended=at_step,
        waiting_at_compensation_when_it_ended=at_compensation,
        readyz_while_it_lasted=dict(Counter(during)),
        readyz_after=after,
    )
    if at_step == 0:
        result.problems.append(f"the fault met no saga at {case.target}'s step")
    if at_compensation == 0:
        result.problems.append(f"the fault met no compensation at {case.target}")
    if during and all(status == 200 for status in during):
        result.problems.append(f"{case.target}'s /readyz answered 200 all through the fault")
    if after != 200:
        result.problems.append(f"{case.target}'s /readyz answered {after} after the fault")


# -- hostile input -------------------------------------------------------------------------


async def poison_headers(system: FaultSystem, result: CaseResult) -> None:
    await system.start_many(15)
    before = await asyncio.to_thread(broker_connections, system.url)
    poison = poison_start(system.client, sample_order(Scenario.FULFILLED), spec=SPEC)
    await system.send(poison)
    crowded = system.order(Scenario.FULFILLED)
    await system.start(crowded, headers=crowded_headers())
    await system.start_many(30, over=3.0)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append("not every saga ended")
    after = await asyncio.to_thread(broker_connections, system.url)
    result.evidence["poison"] = poison.shape
    if before is None or after is None:
        result.evidence["connections"] = "unchecked: no rabbitmqctl for this broker"
    else:
        closed = before - after
        result.evidence["connections closed"] = len(closed)
        if closed:
            result.problems.append(f"{len(closed)} connection(s) on the virtual host were closed")
    too_large = [
        name
        for name in PARTICIPANTS
        if "frame_too_large" in await asyncio.to_thread(system.procs.log_path(name).read_text)
    ]
    if too_large:
        result.problems.append(f"the broker refused a frame as too large from {too_large}")


async def amplification(system: FaultSystem, result: CaseResult) -> None:
    await system.start_many(15)
    amplified = amplified_start(system.client, sample_order(Scenario.FULFILLED), spec=SPEC)
    await system.send(amplified)
    await system.start_many(30, over=3.0)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append("not every saga ended")
    oversized = system.oversized_on_the_wire(MAX_MESSAGE_BYTES)
    result.evidence["amplified"] = amplified.shape
    if oversized:
        result.problems.append(f"events over the size limit on the wire: {oversized}")


def _order_size(order: OrderCreated) -> int:
    client = SagaClient("amqp://unused", SPEC, producer="fault-matrix")
    return len(client.new_saga(order).encode())


@cache
def small_limit() -> int:
    """A size limit just over the largest valid start event: its next event is over it."""
    return _order_size(largest_order("fault-matrix-largest")) + 64


async def amplification_small_limit(system: FaultSystem, result: CaseResult) -> None:
    await system.start_many(15)
    largest = largest_order("fault-matrix-largest")
    # Its own events, a little larger each, are over the limit: its first step cannot
    # announce anything. It must end cancelled for that reason, or be parked at once.
    plan = PlannedOrder(
        Scenario.FULFILLED,
        largest,
        override=(ANY_STEP, "event_too_large"),
        may_park=("inventory", "too_large"),
    )
    saga = await system.start(plan)
    await system.start_many(30, over=3.0)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append("not every saga ended")
    oversized = system.oversized_on_the_wire(small_limit())
    result.evidence.update(
        limit=small_limit(),
        start_event=_order_size(largest),
        events_of_the_large_saga=sorted(t or "?" for t in system.events(saga)),
    )
    if oversized:
        result.problems.append(f"events over the size limit on the wire: {oversized}")


async def conflicting_duplicate(system: FaultSystem, result: CaseResult) -> None:
    sagas = await system.start_many(6, scenarios=[Scenario.FULFILLED])
    sagas += await system.start_many(4, scenarios=[Scenario.CARD_DECLINED])
    sagas += await system.start_many(10)
    if not await system.settle(within=120):
        result.problems.append("the first sagas did not end")
    by_type: dict[str, list[Seen]] = {}
    for saga in sagas:
        for seen in system.ledger.by_saga.get(saga, []):
            by_type.setdefault(seen.event_type or "", []).append(seen)
    conflicts = [
        conflicting_copy(by_type["order.created"][0], spec=SPEC),  # at inventory's step
        conflicting_copy(by_type["inventory.reserved"][1], spec=SPEC),  # at payment's step
        conflicting_copy(by_type["payment.failed"][0], spec=SPEC),  # at inventory's undo
    ]
    for conflict in conflicts:
        await system.send(conflict)
    for seen in (by_type["order.created"][2], by_type["payment.processed"][0]):
        system.duplicated.append(seen)
        exact = Hostile(
            message_id=seen.message_id,
            routing_key=seen.routing_key,
            body=seen.body,
            shape="an exact duplicate",
            parked_by=frozenset(),  # it changes nothing, and is parked nowhere
            saga_id=seen.saga_id,
            headers=dict(seen.headers),
        )
        await system.send(exact)
    await system.start_many(20, over=2.0)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append("not every saga ended")
    result.evidence["conflicting"] = [conflict.routing_key for conflict in conflicts]


async def stranger(system: FaultSystem, result: CaseResult) -> None:
    await system.start_many(15)
    strangers = [stranger_backward(SPEC, event_type) for event_type in backward_events(SPEC)]
    for hostile in strangers:
        await system.send(hostile)
    await system.start_many(30, over=3.0)
    if not await system.settle(within=SETTLE_SECONDS):
        result.problems.append("not every saga ended")
    result.evidence["strangers"] = [f"{h.routing_key} -> {sorted(h.parked_by)}" for h in strangers]


InputCase = Callable[[FaultSystem, CaseResult], Awaitable[None]]
INPUT_CASES: dict[str, tuple[InputCase, dict[str, str]]] = {
    "poison_headers": (poison_headers, {}),
    "amplification": (amplification, {}),
    "amplification_small_limit": (amplification_small_limit, {"<P>MAX_MESSAGE_BYTES": ""}),
    "conflicting_duplicate": (conflicting_duplicate, {}),
    "stranger_backward_event": (stranger, {}),
}

CASES = [*STORE_CASES, *INPUT_CASES]


# -- running them --------------------------------------------------------------------------


@cache
def _unavailable(placement: Placement) -> str | None:
    """Why stores cannot be placed so here (None: they can)."""
    try:
        if placement == "cluster":
            postgres_bin_dir()
        elif placement == "volume":
            with SmallVolume(size_mb=4):
                pass
    except (ClusterError, VolumeUnavailable) as exc:
        return str(exc)
    return None


class Matrix:
    """Runs the selected cases at once, at most ``concurrency`` systems at a time."""

    def __init__(
        self, base: Path, selected: list[str], *, concurrency: int, config: pytest.Config
    ) -> None:
        self.base = base
        self.config = config
        self.selected = [case for case in CASES if case in selected]
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[CaseResult]] = {}

    def start(self) -> None:
        for case in self.selected:  # longest first: CASES is in that order
            self._tasks[case] = asyncio.create_task(self._run(case), name=f"case-{case}")

    async def result(self, case: str) -> CaseResult:
        return await asyncio.shield(self._tasks[case])

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        results = await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        summary = [r.summary() for r in results if isinstance(r, CaseResult)]
        self.config.stash[MATRIX_SUMMARY] = summary
        text = json.dumps(summary, indent=2, default=str)
        paths = [self.base / "summary.json"]
        if os.environ.get("SAGAKIT_FAULTS_SUMMARY"):
            paths.append(Path(os.environ["SAGAKIT_FAULTS_SUMMARY"]))
        for path in paths:
            await asyncio.to_thread(path.write_text, text)

    async def _run(self, case: str) -> CaseResult:
        result = CaseResult(case)
        store_case = STORE_CASES.get(case)
        placement: Placement = store_case.placement if store_case else "sqlite"
        reason = await asyncio.to_thread(_unavailable, placement)
        if reason is not None:
            result.skipped = reason
            return result
        async with self._slots:
            began = time.monotonic()
            try:
                await self._carry_out(case, store_case, result)
            finally:
                result.seconds = time.monotonic() - began
        return result

    async def _carry_out(self, case: str, store_case: StoreCase | None, result: CaseResult) -> None:
        workdir = self.base / case
        if store_case is not None:
            async with FaultSystem(
                case,
                workdir,
                layout={store_case.target: store_case.placement},
                health=[store_case.target],
            ) as system:
                await store_fault(system, store_case, result)
                result.add_audit(await system.audit())
                result.evidence["parked"] = system.parked
            return
        carry_out, env = INPUT_CASES[case]
        if "<P>MAX_MESSAGE_BYTES" in env:
            env = {"<P>MAX_MESSAGE_BYTES": str(small_limit())}
        async with FaultSystem(case, workdir, service_env=env) as system:
            await carry_out(system, result)
            result.add_audit(await system.audit())
            result.evidence["parked"] = system.parked


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Matrix]:
    selected: list[str] = [
        str(item.callspec.params["case"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is request.module
        and hasattr(item, "callspec")
    ]
    concurrency = int(os.environ.get("SAGAKIT_FAULTS_CONCURRENCY", "4"))
    runner = Matrix(
        tmp_path_factory.mktemp("fault-matrix"),
        selected,
        concurrency=concurrency,
        config=request.config,
    )
    runner.start()
    try:
        yield runner
    finally:
        await runner.close()


@pytest.mark.parametrize("case", CASES)
async def test_fault_matrix(case: str, matrix: Matrix) -> None:
    result = await matrix.result(case)
    if result.skipped is not None:
        unavailable(f"{case} cannot run here: {result.skipped}")
    evidence = json.dumps(result.evidence, default=str)
    problems = "\n".join(f"- {problem}" for problem in result.problems)
    assert not result.problems, (
        f"{case} ({result.seconds:.0f}s): {len(result.problems)} problem(s)\n{problems}\n"
        f"evidence: {evidence}\nlogs: {matrix.base / case}"
    )
