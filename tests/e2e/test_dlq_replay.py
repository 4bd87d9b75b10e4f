"""The order system's stuck sagas, dead-lettered by the broker, replayed to their end.

Inventory dies in the middle of every compensation (a crash point: SIGKILL before the
transaction commits), as a service with a fatal bug would. Each death returns the message
to its quorum queue; after the delivery limit the broker dead-letters it, and the sagas
stand still with their stock reserved. Once inventory is fixed (started without the crash),
``saga dlq`` shows why and where from, and ``saga dlq replay`` ends every saga: stock is
released and the orders are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit.cli import app, load_plugins
from sagakit.client import DeadLetters, ParkedMessage, SagaClient
from sagakit.testing import QueueProbe, ServiceProcesses, ServiceStartError, consumed_queues
from typer.testing import CliRunner, Result

from .conftest import OrderSystem, event_types, service_processes, sqlite_databases

pytestmark = pytest.mark.e2e

SAGAS = 3
DELIVERY_LIMIT = 1
CRASH = {"SAGAKIT_CRASH_AT": "mid_compensation:payment.failed"}


async def _saga(*arguments: str) -> Result:
    load_plugins()
    return await asyncio.to_thread(
        CliRunner().invoke, app, ["dlq", *arguments], env={"COLUMNS": "200"}
    )


async def _until_parked(
    procs: ServiceProcesses, dead_letters: DeadLetters, count: int
) -> list[ParkedMessage]:
    """Start inventory again whenever it dies (as a supervisor would) until all are parked."""
    probe = QueueProbe(procs.url)
    queues = consumed_queues(ORDER_SAGA, "inventory")
    try:
        async with asyncio.timeout(150):
            while len(parked := await dead_letters.parked()) < count:
                if not procs.alive("inventory"):
                    while any((await probe.counts(queues)).values()):
                        await asyncio.sleep(0.1)
                    with contextlib.suppress(ServiceStartError):  # dies on the first message
                        await procs.start("inventory", timeout=60)
                await asyncio.sleep(0.2)
    finally:
        await probe.close()
    return parked


@pytest.mark.timeout(300)
async def test_sagas_dead_lettered_by_the_broker_end_when_replayed(
    module_broker_url: str, tmp_path: Path
) -> None:
    url = module_broker_url
    databases = sqlite_databases(tmp_path)
    procs = service_processes(
        url,
        tmp_path,
        databases,
        service_env={"inventory": {**CRASH, "INVENTORY_DELIVERY_LIMIT": str(DELIVERY_LIMIT)}},
    )
    connection = ["--url", url]
    async with (
        procs,
        SagaClient(url, ORDER_SAGA, producer="dlq-e2e") as client,
        client.watch() as watch,
        DeadLetters(url, services=["inventory"]) as dead_letters,
    ):
        await procs.start(timeout=90)
        started = [await client.start(sample_order(Scenario.CARD_DECLINED)) for _ in range(SAGAS)]
        saga_ids = {str(envelope.context.saga_id) for envelope in started}
        parked = await _until_parked(procs, dead_letters, SAGAS)
        assert {entry.saga_id for entry in parked} == saga_ids
        for entry in parked:
            assert (entry.parked_by, entry.broker_reason) == ("broker", "delivery_limit")
            assert entry.origin_queue == "inventory.payment.failed"
            assert entry.event_type == "payment.failed"
        # Stuck: charged nothing, but the stock is still reserved and nobody was told.
        assert not any(watch.ended(envelope.context.saga_id) for envelope in started)

        procs.service_env["inventory"].pop("SAGAKIT_CRASH_AT")  # the fix is deployed
        if not procs.alive("inventory"):
            await procs.start("inventory", timeout=60)

        listed = await _saga("list", *connection)
        grouped = await _saga("list", "--group-by", "reason", *connection)
        shown = await _saga("show", parked[0].id, *connection)
        replayed = await _saga("replay", "--reason", "delivery_limit", *connection)
        for result in (listed, grouped, shown, replayed):
            print(result.stdout)
            assert result.exit_code == 0, result.output
        assert f"replayed {SAGAS} message(s)" in replayed.stdout
        # personal data stays out of `show` unless asked for
        order = started[0].payload
        assert order.customer.email not in shown.stdout
        assert order.shipping_address.line1 not in shown.stdout

        ended = await watch.wait_all([e.context.saga_id for e in started], timeout=60)
        for saga_id, events in ended.items():
            print(f"saga {saga_id}: {' -> '.join(event_types(events))}")
            assert event_types(events)[-2:] == ["inventory.released", "order.cancelled"], saga_id
            assert events[-1].payload.reason == "card_declined"
        assert await dead_letters.parked() == []

    stock = OrderSystem(procs, client, watch, databases)
    assert await stock.stock("SKU-APPLE") == 1000  # every reservation released
