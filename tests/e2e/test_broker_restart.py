"""RabbitMQ restarts (stop_app / start_app) with sagas in flight: every saga still ends,
nothing is lost, nothing is applied twice. The services' own stores are the evidence."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter

import pytest
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order

from .conftest import OrderSystem

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SCENARIOS = [
    Scenario.FULFILLED,
    Scenario.FULFILLED,
    Scenario.OUT_OF_STOCK,
    Scenario.CARD_DECLINED,
    Scenario.NOT_SERVED,
    Scenario.UNREACHABLE,
]


async def _rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.DEVNULL
    )
    assert await process.wait() == 0, f"rabbitmqctl {' '.join(args)} failed"


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs a local broker to restart")
async def test_sagas_in_flight_survive_a_broker_restart(order_system: OrderSystem) -> None:
    system = order_system
    stock_before = await system.stock("SKU-APPLE")
    sagas: dict[str, Scenario] = {}
    for n in range(30):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        started = await system.client.start(sample_order(scenario))
        sagas[str(started.context.saga_id)] = scenario

    await _rabbitmqctl("stop_app")
    try:
        await asyncio.sleep(3)
    finally:
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")

    # every saga ends with exactly one notice: a confirmation or a cancellation notice
    async with asyncio.timeout(120):
        while True:
            notices = await system.rows("notification", "SELECT saga_id, kind FROM notices")
            if {n["saga_id"] for n in notices} >= set(sagas):
                break
            await asyncio.sleep(0.5)
    mine = [n for n in notices if n["saga_id"] in sagas]
    assert Counter(n["saga_id"] for n in mine) == Counter(dict.fromkeys(sagas, 1))
    for notice in mine:
        fulfilled = EXPECTED_FAILED_STEP[sagas[notice["saga_id"]]] is None
        assert notice["kind"] == ("confirmation" if fulfilled else "cancellation")

    fulfilled = sum(1 for s in sagas.values() if EXPECTED_FAILED_STEP[s] is None)
    await asyncio.sleep(1)  # the last compensations commit just before their notices
    assert await system.stock("SKU-APPLE") == stock_before - 2 * fulfilled
    payments = await system.rows("payment", "SELECT saga_id, status FROM payments")
    by_saga = {p["saga_id"]: p["status"] for p in payments if p["saga_id"] in sagas}
    for saga, scenario in sagas.items():
        if scenario is Scenario.FULFILLED:
            assert by_saga[saga] == "captured"
        elif scenario in (Scenario.NOT_SERVED, Scenario.UNREACHABLE):
            assert by_saga[saga] == "refunded"
        else:
            assert saga not in by_saga
    refunds = await system.rows("payment", "SELECT payment_id FROM refunds")
    assert len(refunds) == len({r["payment_id"] for r in refunds})  # no double refunds
    for service in ("inventory", "payment", "shipping", "notification"):
        assert system.procs.alive(service)
