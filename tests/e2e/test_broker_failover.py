"""A broker node dies under the services; they go on on another node of the cluster.

The test starts a 3-node RabbitMQ cluster of its own (sagakit_lab.rabbit: private node
names, ports, data and cookie; never the machine's broker). The four services get every
node in the comma form of the URL, node 1 first, so all of them run on node 1; the test's
own client and probe use node 3. With sagas in flight node 1 is killed (SIGKILL: no clean
close, as a crash or a power cut leaves it). Then every work queue must have its consumer
back, the services must never have been restarted, and every saga, whether started before
or after the kill, must end exactly once: one notice per saga, stock and payments that
match the outcomes. Work queues are quorum queues declared while all three nodes run, so
each has three members and keeps its majority without node 1.

Where ``rabbitmq-server`` is not installed the test is skipped, except with ``CI=true``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit.client import SagaClient, connect
from sagakit.testing import consumed_queues
from sagakit_lab import RabbitCluster, rabbitmq_missing

from tests.brokers import unavailable

from .conftest import PARTICIPANTS, OrderSystem, service_processes, sqlite_databases

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SCENARIOS = [
    Scenario.FULFILLED,
    Scenario.FULFILLED,
    Scenario.OUT_OF_STOCK,
    Scenario.CARD_DECLINED,
    Scenario.NOT_SERVED,
    Scenario.UNREACHABLE,
]
BEFORE_THE_KILL = 40
AFTER_THE_KILL = 20
# Liveness, not speed: a service that waits for the dead node (minutes) fails; one that
# moves to the next node passes, however slow the machine.
RESUME_WITHIN = 60.0
WORK_QUEUES = tuple(q for p in PARTICIPANTS for q in consumed_queues(ORDER_SAGA, p))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    reason = rabbitmq_missing()
    if reason is not None:
        unavailable(f"the failover test needs a 3-node cluster of its own: {reason}")
    with RabbitCluster(tmp_path_factory.mktemp("cluster"), size=3) as cluster:
        yield cluster


def _every_node_running(cluster: RabbitCluster) -> RabbitCluster:
    # A test before may have killed one: it comes back with its data and rejoins.
    stopped = [node for node in cluster if not node.running]
    for node in stopped:
        node.start()
    if stopped:
        cluster.wait_clustered()
    return cluster


@pytest.fixture
def whole_cluster(cluster: RabbitCluster) -> RabbitCluster:
    """The cluster with every node running."""
    return _every_node_running(cluster)


@pytest.mark.timeout(180)
async def test_a_publisher_refused_after_its_queues_lost_their_leader_gets_through(
    whole_cluster: RabbitCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # RabbitMQ 3.10 refuses, for the channel's whole life, every publish to a quorum queue
    # whose first publish on that channel came while its leader's node had just died.
    # sagakit's connections renew themselves when a channel gets only refusals.
    cluster = whole_cluster
    _, second, third = cluster.nodes
    queues = [f"renewal-{n}" for n in range(8)]
    declaring = await aio_pika.connect(second.url)  # their leaders: on node 2
    channel = await declaring.channel()
    for name in queues:
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    await declaring.close()
    publisher = await connect(cluster.url_for(nodes=[third]), connect_timeout=10)
    try:
        out = await publisher.channel()
        second.kill()
        killed_at = time.monotonic()

        async def publish_until_confirmed(queue: str) -> int:
            refused = 0
            while True:
                assert time.monotonic() - killed_at < RESUME_WITHIN, (queue, refused)
                try:
                    await out.default_exchange.publish(
                        aio_pika.Message(b"x", delivery_mode=2), routing_key=queue, timeout=5
                    )
                    return refused
                except Exception:  # refused, or the connection renewing: try again
                    refused += 1
                    await asyncio.sleep(0.05)

        refusals = await asyncio.gather(*(publish_until_confirmed(q) for q in queues))
    finally:
        await publisher.close()
    with capsys.disabled():
        print(
            f"\nrefused publishes after the leaders' node died: {sum(refusals)} in all; every "
            f"queue took a publish {time.monotonic() - killed_at:.1f}s after the kill"
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    cluster: RabbitCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OrderSystem]:
    # Declared while every node runs, each quorum queue gets a member on each node.
    _every_node_running(cluster)
    directory = tmp_path_factory.mktemp("failover")
    databases = sqlite_databases(directory)
    survivor = cluster.nodes[2].url
    async with (
        # Readiness is checked on node 3; the services themselves get every node, 1 first.
        service_processes(
            survivor, directory, databases, env={"RABBITMQ_URL": cluster.url}
        ) as procs,
        SagaClient(survivor, ORDER_SAGA, producer="failover-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=120)
        yield OrderSystem(procs, client, watch, databases)


@pytest.mark.timeout(300)
async def test_the_services_go_on_on_another_node_when_theirs_dies(
    whole_cluster: RabbitCluster, system: OrderSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = whole_cluster
    first, _, third = cluster.nodes
    # The cluster is the test's own: not the machine's node, not its port.
    assert not {node.nodename for node in cluster} & {"rabbit@localhost"}
    assert 5672 not in {node.port for node in cluster}
    # Every work queue has a member on each node, so it keeps a majority without node 1.
    queues = {q["name"]: q for q in third.queues("/", "name", "type", "members")}
    for name in WORK_QUEUES:
        assert queues[name]["type"] == "quorum", name
        assert sorted(queues[name]["members"]) == sorted(n.nodename for n in cluster), name
    # The services run on node 1: it holds their four connections.
    assert len(first.connections()) >= len(PARTICIPANTS)

    stock_before = await system.stock("SKU-APPLE")
    sagas: dict[str, Scenario] = {}
    for n in range(BEFORE_THE_KILL):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        started = await system.client.start(sample_order(scenario))
        sagas[str(started.context.saga_id)] = scenario
    ended_before_kill = sum(system.watch.ended(uuid.UUID(s)) for s in sagas)

    first.kill()
    killed_at = time.monotonic()

    # A saga started the moment the node is gone: each of its events shows that one more
    # service consumes and publishes again, on another node.
    probe_saga = await system.client.start(sample_order(Scenario.FULFILLED))
    saga_id = probe_saga.context.saga_id
    sagas[str(saga_id)] = Scenario.FULFILLED
    resumed: dict[str, float] = {}
    while not system.watch.ended(saga_id):
        assert time.monotonic() - killed_at < RESUME_WITHIN, system.watch.events(saga_id)
        for event in system.watch.events(saga_id):
            resumed.setdefault(event.producer, time.monotonic() - killed_at)
        await asyncio.sleep(0.05)
    for event in system.watch.events(saga_id):
        resumed.setdefault(event.producer, time.monotonic() - killed_at)
    assert set(resumed) >= set(PARTICIPANTS), resumed

    for n in range(AFTER_THE_KILL):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        started = await system.client.start(sample_order(scenario))
        sagas[str(started.context.saga_id)] = scenario

    # Every saga ends with exactly one notice: a confirmation or a cancellation notice.
    async with asyncio.timeout(120):
        while True:
            notices = await system.rows("notification", "SELECT saga_id, kind FROM notices")
            if {n["saga_id"] for n in notices} >= set(sagas):
                break
            await asyncio.sleep(0.5)
    all_ended = time.monotonic() - killed_at
    mine = [n for n in notices if n["saga_id"] in sagas]
    per_saga = Counter(n["saga_id"] for n in mine)
    lost = len(set(sagas) - set(per_saga))
    duplicated = sum(1 for count in per_saga.values() if count > 1)
    with capsys.disabled():
        print(
            f"\nbroker failover: {len(sagas)} sagas ({BEFORE_THE_KILL} started before the "
            f"kill, {ended_before_kill} of them ended by then; {AFTER_THE_KILL + 1} after); "
            "node 1 killed -> consuming and publishing again after: "
            + ", ".join(f"{name} {resumed[name]:.1f}s" for name in PARTICIPANTS)
            + f"; every saga ended {all_ended:.1f}s after the kill; "
            f"lost {lost}, duplicated {duplicated}"
        )
    assert per_saga == Counter(dict.fromkeys(sagas, 1))
    for notice in mine:
        fulfilled = EXPECTED_FAILED_STEP[sagas[notice["saga_id"]]] is None
        assert notice["kind"] == ("confirmation" if fulfilled else "cancellation")

    fulfilled_count = sum(1 for s in sagas.values() if EXPECTED_FAILED_STEP[s] is None)
    await asyncio.sleep(1)  # the last compensations commit just before their notices
    assert await system.stock("SKU-APPLE") == stock_before - 2 * fulfilled_count
    payments = await system.rows("payment", "SELECT saga_id, status FROM payments")
    by_saga: dict[str, Any] = {p["saga_id"]: p["status"] for p in payments if p["saga_id"] in sagas}
    for saga, scenario in sagas.items():
        if scenario is Scenario.FULFILLED:
            assert by_saga[saga] == "captured"
        elif scenario in (Scenario.NOT_SERVED, Scenario.UNREACHABLE):
            assert by_saga[saga] == "refunded"
        else:
            assert saga not in by_saga
    refunds = await system.rows("payment", "SELECT payment_id FROM refunds")
    assert len(refunds) == len({r["payment_id"] for r in refunds})  # no double refunds
    # Nobody was restarted: the same processes moved to another node by themselves.
    assert all(system.procs.alive(name) for name in system.procs.names)
    assert not first.running
