"""Crashes: kill -9 at the worst moments, on SQLite and on PostgreSQL. Every saga still ends
correctly and every effect is applied exactly once.

Faults (each a real SIGKILL inside the service, armed once per run):
- payment, after committing the charge and before publishing payment.processed;
- shipping, after committing the shipment and publishing, before acking payment.processed;
- inventory, in the middle of releasing stock (compensation ran, not yet committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit.client import SagaClient

from .conftest import PARTICIPANTS, OrderSystem, event_types, service_processes, sqlite_databases

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ARMED = {
    "payment": "before_publish:inventory.reserved",
    "shipping": "before_ack:payment.processed",
    "inventory": "mid_compensation:payment.failed",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def crashing_system(
    request: pytest.FixtureRequest,
    module_broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database: Callable[[], str],
) -> AsyncIterator[OrderSystem]:
    directory = tmp_path_factory.mktemp(f"crash-{request.param}")
    databases = (
        sqlite_databases(directory)
        if request.param == "sqlite"
        else {name: postgres_database() for name in PARTICIPANTS}
    )
    marker = str(directory / "crashed")
    service_env = {
        name: {"SAGAKIT_CRASH_AT": armed, "SAGAKIT_CRASH_MARKER": marker}
        for name, armed in ARMED.items()
    }
    async with (
        service_processes(
            module_broker_url, directory, databases, service_env=service_env
        ) as procs,
        SagaClient(module_broker_url, ORDER_SAGA, producer="crash-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=90)
        yield OrderSystem(procs, client, watch, databases)


async def _crashes_and_comes_back(system: OrderSystem, service: str, marker_glob: str) -> None:
    async with asyncio.timeout(30):
        while system.procs.alive(service):
            await asyncio.sleep(0.05)
    fired = await asyncio.to_thread(lambda: list(Path(system.procs.log_dir).glob(marker_glob)))
    assert fired, f"{service} died, but not at its crash point"
    await system.procs.restart(service, timeout=60)


async def _one(system: OrderSystem, sql: str, service: str, saga: str) -> int:
    return len(await system.rows(service, sql, s=saga))


async def test_crashes_on_the_forward_path_apply_each_effect_once(
    crashing_system: OrderSystem,
) -> None:
    system = crashing_system
    before = await system.stock("SKU-APPLE")
    started = await system.client.start(sample_order(Scenario.FULFILLED))
    saga_id = started.context.saga_id
    await _crashes_and_comes_back(system, "payment", "crashed.before_publish.*")
    await _crashes_and_comes_back(system, "shipping", "crashed.before_ack.*")
    events = await system.watch.wait_for_end(saga_id, timeout=60)
    assert event_types(events)[-1] == "order.fulfilled"
    saga = str(saga_id)
    assert await system.stock("SKU-APPLE") == before - 2
    assert await _one(system, "SELECT 1 FROM payments WHERE saga_id = :s", "payment", saga) == 1
    assert await _one(system, "SELECT 1 FROM shipments WHERE saga_id = :s", "shipping", saga) == 1
    assert await _one(system, "SELECT 1 FROM notices WHERE saga_id = :s", "notification", saga) == 1
    # payment's event was published once, by the relay after the restart
    published = [e for e in events if e.event_type == "payment.processed"]
    assert len({e.event_id for e in published}) == 1
    pending = await system.rows("payment", "SELECT 1 FROM sagakit_outbox WHERE sent_at IS NULL")
    assert pending == []


async def test_a_crash_in_the_middle_of_a_compensation_undoes_once(
    crashing_system: OrderSystem,
) -> None:
    system = crashing_system
    before = await system.stock("SKU-APPLE")
    started = await system.client.start(sample_order(Scenario.CARD_DECLINED))
    await _crashes_and_comes_back(system, "inventory", "crashed.mid_compensation.*")
    events = await system.watch.wait_for_end(started.context.saga_id, timeout=60)
    assert event_types(events) == [
        "order.created",
        "inventory.reserved",
        "payment.failed",
        "inventory.released",
        "order.cancelled",
    ]
    assert await system.stock("SKU-APPLE") == before  # released exactly once
    saga = str(started.context.saga_id)
    [reservation] = await system.rows(
        "inventory", "SELECT status FROM reservations WHERE saga_id = :s", s=saga
    )
    assert reservation["status"] == "released"
