"""RabbitMQ restarts with sagas in flight: every saga still ends, nothing is lost, nothing
is applied twice. The services' own stores are the evidence.

The broker restarted is the session's private node (``private_rabbit``: its own name, ports
and data), stopped cleanly and started again: never the broker a developer runs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit_lab import RabbitNode

from tests.brokers import throwaway_vhost

from .conftest import OrderSystem, running_order_system

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SCENARIOS = [
    Scenario.FULFILLED,
    Scenario.FULFILLED,
    Scenario.OUT_OF_STOCK,
    Scenario.CARD_DECLINED,
    Scenario.NOT_SERVED,
    Scenario.UNREACHABLE,
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def private_system(
    private_rabbit: RabbitNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OrderSystem]:
    """The order system on a virtual host of the private node."""
    with throwaway_vhost(private_rabbit.url, private=private_rabbit) as url:
        async with running_order_system(url, tmp_path_factory.mktemp("restart")) as system:
            yield system


@pytest.mark.timeout(240)
async def test_sagas_in_flight_survive_a_broker_restart(
    private_rabbit: RabbitNode, private_system: OrderSystem
) -> None:
    system = private_system
    stock_before = await system.stock("SKU-APPLE")
    sagas: dict[str, Scenario] = {}
    for n in range(30):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        started = await system.client.start(sample_order(scenario))
        sagas[str(started.context.saga_id)] = scenario

    # Stopped cleanly (a clean shutdown of the private node), down for 3 s, started again.
    await asyncio.to_thread(private_rabbit.restart, down=3)

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

    fulfilled_count = sum(1 for s in sagas.values() if EXPECTED_FAILED_STEP[s] is None)
    await asyncio.sleep(1)  # the last compensations commit just before their notices
    assert await system.stock("SKU-APPLE") == stock_before - 2 * fulfilled_count
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
