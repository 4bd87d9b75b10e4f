"""Scale-out: two replicas of every service on PostgreSQL, competing for the same queues.

A burst of sagas in which every order.created and a mid-saga event are published twice, so
two replicas may take the same event at the same moment; every effect is applied once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit.client import SagaClient

from .conftest import PARTICIPANTS, OrderSystem, event_types, service_processes

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SCENARIOS = [
    Scenario.FULFILLED,
    Scenario.FULFILLED,
    Scenario.FULFILLED,
    Scenario.OUT_OF_STOCK,
    Scenario.CARD_DECLINED,
    Scenario.NOT_SERVED,
    Scenario.UNREACHABLE,
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicated_system(
    module_broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database: Callable[[], str],
) -> AsyncIterator[OrderSystem]:
    directory = tmp_path_factory.mktemp("scale-out")
    databases = {name: postgres_database() for name in PARTICIPANTS}
    # The per-message "Received" lines show which replica handled what (they are at DEBUG
    # unless asked for).
    message_logs = {f"{p.upper()}_MESSAGE_LOG_LEVEL": "INFO" for p in PARTICIPANTS}
    async with (
        service_processes(
            module_broker_url, directory, databases, replicas=2, env=message_logs
        ) as procs,
        SagaClient(module_broker_url, ORDER_SAGA, producer="scale-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=120)
        yield OrderSystem(procs, client, watch, databases)


async def test_two_replicas_apply_every_effect_once(replicated_system: OrderSystem) -> None:
    system = replicated_system
    stock_before = await system.stock("SKU-APPLE")
    scenarios = {}
    for n in range(42):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        created = system.client.new_saga(sample_order(scenario))
        scenarios[created.context.saga_id] = scenario
        await asyncio.gather(system.client.publish(created), system.client.publish(created))

    ended = await system.watch.wait_all(scenarios, timeout=120)
    # and a duplicate of a mid-saga event, after the fact, to both replicas at once
    for events in ended.values():
        processed = [e for e in events if e.event_type == "payment.processed"]
        if processed:
            await asyncio.gather(*(system.client.publish(processed[0]) for _ in range(2)))
    await asyncio.sleep(2)

    for saga_id, scenario in scenarios.items():
        types = event_types(ended[saga_id])
        expected_failure = EXPECTED_FAILED_STEP[scenario]
        assert types[-1] == ("order.fulfilled" if expected_failure is None else "order.cancelled")
        assert len(types) == len(set(types)), f"an event was emitted twice: {types}"

    fulfilled = [s for s, sc in scenarios.items() if EXPECTED_FAILED_STEP[sc] is None]
    assert await system.stock("SKU-APPLE") == stock_before - 2 * len(fulfilled)
    sagas = {str(s) for s in scenarios}
    payments = [
        p
        for p in await system.rows("payment", "SELECT saga_id FROM payments")
        if p["saga_id"] in sagas
    ]
    assert max(Counter(p["saga_id"] for p in payments).values()) == 1
    shipments = [
        s
        for s in await system.rows("shipping", "SELECT saga_id FROM shipments")
        if s["saga_id"] in sagas
    ]
    assert max(Counter(s["saga_id"] for s in shipments).values()) == 1
    notices = [
        n
        for n in await system.rows("notification", "SELECT saga_id FROM notices")
        if n["saga_id"] in sagas
    ]
    assert Counter(n["saga_id"] for n in notices) == Counter(dict.fromkeys(sagas, 1))
    reservations = [
        r
        for r in await system.rows("inventory", "SELECT saga_id FROM reservations")
        if r["saga_id"] in sagas
    ]
    assert max(Counter(r["saga_id"] for r in reservations).values()) == 1
    # both replicas of each service did work
    for participant in ("inventory", "payment"):
        handled = []
        for replica in (1, 2):
            log = (system.procs.log_path(f"{participant}-{replica}")).read_text()
            handled.append(log.count("Received"))
        assert all(count > 0 for count in handled), handled
