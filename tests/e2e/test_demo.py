"""``saga demo`` as a newcomer runs it, and the process machinery under it.

The broker is this module's throwaway virtual host (``module_broker_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest
from order_cli._demo import scenarios_for
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit import BrokerUnavailable
from sagakit.broker import with_vhost
from sagakit.client import SagaClient, connect
from sagakit.testing import ServiceApp, ServiceProcesses, ServiceStartError, consumed_queues

from tests.brokers import fresh_broker_url

NO_module_broker_url = "amqp://guest:guest@127.0.0.1:1/"

# How many events each scenario's saga has, start and terminal event included.
EVENTS_PER_SCENARIO = {
    Scenario.FULFILLED: 5,
    Scenario.OUT_OF_STOCK: 3,
    Scenario.CARD_DECLINED: 5,
    Scenario.LIMIT_EXCEEDED: 5,
    Scenario.NOT_SERVED: 7,
    Scenario.UNREACHABLE: 9,
}


def saga_command() -> str:
    beside_python = Path(sys.executable).with_name("saga")
    found = str(beside_python) if beside_python.exists() else shutil.which("saga")
    assert found, "the saga console script is not installed"
    return found


def run_saga(*arguments: str, url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [saga_command(), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RABBITMQ_URL": url},
        check=False,
    )


def processes_started_for(directory: str) -> list[int]:
    """Pids of processes whose environment points into ``directory`` (the demo's services)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if directory.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.e2e
def test_the_demo_ends_every_saga_as_its_scenario_expects(module_broker_url: str) -> None:
    result = run_saga("demo", "--orders", "12", "--json", url=module_broker_url, timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    sagas = report["sagas"]
    assert len(sagas) == 12
    assert {saga["scenario"] for saga in sagas} == {scenario.value for scenario in Scenario}
    for saga in sagas:
        scenario = Scenario(saga["scenario"])
        expected_step = EXPECTED_FAILED_STEP[scenario]
        assert saga["outcome"] == ("fulfilled" if expected_step is None else "cancelled"), saga
        assert saga["failed_step"] == expected_step, saga
        assert saga["events"] == EVENTS_PER_SCENARIO[scenario], saga
        assert saga["duration_ms"] > 0
        assert saga["as_expected"]

    summary = report["summary"]
    assert summary["pending"] == 0
    assert summary["unexpected"] == 0
    planned = [EXPECTED_FAILED_STEP[kind] for kind in scenarios_for(12)]
    assert summary["outcomes"] == {
        "fulfilled": planned.count(None),
        "cancelled": 12 - planned.count(None),
    }
    assert summary["failed_steps"] == dict(Counter(step for step in planned if step))
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p95"]

    # It stopped what it started, and kept the logs and databases.
    log_dir = report["log_dir"]
    assert processes_started_for(log_dir) == []
    for participant in ORDER_SAGA.participants():
        assert (Path(log_dir) / f"{participant}.log").stat().st_size > 0
        assert (Path(log_dir) / f"{participant}.db").exists()
    shutil.rmtree(log_dir)


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_without_a_broker_the_demo_says_so_in_one_line_and_starts_nothing(
    extra: list[str],
) -> None:
    began = time.monotonic()
    before = set(Path(tempfile.gettempdir()).glob("saga-demo-*"))
    result = run_saga(
        "demo", "--url", NO_module_broker_url, *extra, url=NO_module_broker_url, timeout=60
    )
    assert result.returncode == 3
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "127.0.0.1:1" in line
    assert "guest:guest" not in line
    assert "rabbitmq-server -detached" in line
    assert "docker compose up -d rabbitmq" in line
    assert set(Path(tempfile.gettempdir()).glob("saga-demo-*")) == before
    assert time.monotonic() - began < 30


@pytest.mark.e2e
async def test_a_killed_service_restarts_and_consumes_again(
    tmp_path: Path, module_broker_url: str
) -> None:
    services = {"inventory": ServiceApp("inventory", "inventory_service.main:create_app")}
    database = {"INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/inventory.db"}
    async with (
        ServiceProcesses(
            services,
            spec=ORDER_SAGA,
            url=module_broker_url,
            log_dir=tmp_path,
            service_env={"inventory": database},
            grace=5,
        ) as procs,
        SagaClient(module_broker_url, ORDER_SAGA, producer="e2e-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=60)
        first_pid = procs.pid("inventory")
        assert first_pid is not None

        procs.kill("inventory")
        assert await procs.wait_exit("inventory", timeout=10) is not None
        assert not procs.alive("inventory")
        # Published while nobody consumes: the durable queue keeps it for the next instance.
        started = await client.start(sample_order(Scenario.OUT_OF_STOCK))

        await procs.restart("inventory", timeout=60)
        assert procs.alive("inventory")
        assert procs.pid("inventory") != first_pid
        events = await watch.wait_for_end(started.context.saga_id, timeout=30)
        assert [event.event_type for event in events] == [
            "order.created",
            "inventory.reservation_failed",
            "order.cancelled",
        ]
    assert not procs.alive("inventory")
    assert processes_started_for(str(tmp_path)) == []


@pytest.mark.e2e
async def test_a_service_that_cannot_start_is_reported_with_its_log(
    tmp_path: Path, module_broker_url: str
) -> None:
    services = {"inventory": ServiceApp("inventory", "inventory_service.no_such_module:create_app")}
    async with ServiceProcesses(
        services, spec=ORDER_SAGA, url=module_broker_url, log_dir=tmp_path
    ) as procs:
        with pytest.raises(ServiceStartError, match="exited with code") as failure:
            await procs.start(timeout=60)
    assert "no_such_module" in str(failure.value)
    assert not procs.alive("inventory")


@pytest.fixture
def own_broker_url() -> Iterator[str]:
    """A virtual host of the test's own: the foreign consumer declares the demo's first queue
    as a stranger would, plainly, which a queue the module's other tests declared refuses."""
    with fresh_broker_url() as url:
        yield url


@contextlib.asynccontextmanager
async def foreign_consumer(url: str) -> AsyncIterator[list[bytes]]:
    """A consumer on the demo's first queue at ``url``, as a service someone else runs; it
    collects the bodies it gets and acknowledges nothing."""
    queue_name = consumed_queues(ORDER_SAGA, "inventory")[0]
    connection = await aio_pika.connect(url)
    got: list[bytes] = []
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, auto_delete=False)

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.append(message.body)

        await queue.consume(keep)
        yield got
    finally:
        await connection.close()


@pytest.mark.e2e
async def test_the_demo_runs_on_a_vhost_of_its_own_beside_other_consumers(
    own_broker_url: str,
) -> None:
    async with foreign_consumer(own_broker_url) as taken:
        result = await asyncio.to_thread(
            run_saga, "demo", "--orders", "6", "--json", url=own_broker_url, timeout=110
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert taken == []  # none of the demo's orders went to the other consumer
    assert json.loads(result.stdout)["summary"]["unexpected"] == 0
    [vhost] = re.findall(r"virtual host (saga-demo-[0-9a-f]{8}) of its own", result.stderr)
    # Deleted at the end: logging in to it is refused.
    with pytest.raises(BrokerUnavailable):
        await connect(with_vhost(own_broker_url, vhost), connect_timeout=5, robust=False)


@pytest.mark.e2e
async def test_on_a_shared_vhost_the_demo_refuses_to_start_beside_other_consumers(
    own_broker_url: str,
) -> None:
    async with foreign_consumer(own_broker_url) as taken:
        result = await asyncio.to_thread(
            run_saga, "demo", "--shared", url=own_broker_url, timeout=60
        )
    assert result.returncode == 5, result.stderr
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    queue = consumed_queues(ORDER_SAGA, "inventory")[0]
    assert f"refusing to start: {queue} has 1 consumer(s)" in message
    assert "--no-start" in message
    assert taken == []
    # Refused before any service started (other runs on the machine may make temporary
    # directories meanwhile: they are not counted).
    assert "starting" not in result.stderr
