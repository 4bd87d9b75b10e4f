"""Least privilege on the real broker, with the users and permissions of
deploy/rabbitmq/definitions.json.

The committed definitions file is imported with ``rabbitmqctl -n <private node>
import_definitions`` (so its password hashes are checked too) into two fresh virtual hosts
of the session's private RabbitMQ node (``private_rabbit``: its own name, ports and data;
users are never added to the broker a developer runs), its users renamed with a suffix of
this run. In one virtual host the four services run as processes, each as its own user,
and sagas complete and compensate; in the other, each account tries what it must not do,
and the broker refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit.broker import (
    REASON_HEADER,
    ParticipantTopology,
    dead_letter_exchange_name,
    dead_letter_queue_name,
    queue_name,
    retry_exchange_name,
    retry_queue_name,
)
from sagakit.client import SagaClient
from sagakit.testing import QueueProbe, consumed_queues
from sagakit.tracker import TRACKER_QUEUE
from sagakit_lab import RabbitNode

from .conftest import PARTICIPANTS, event_types, service_processes, sqlite_databases

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
EVENT_TYPES = sorted(ORDER_SAGA.events)

Action = Callable[[AbstractChannel], Awaitable[object]]


def _emitted(participant: str) -> set[str]:
    events: set[str] = set()
    for step in ORDER_SAGA.steps:
        if step.participant == participant:
            events |= {step.success, step.failure, *filter(None, [step.compensated])}
            if ORDER_SAGA.ends_backward_path(step):
                events.add(ORDER_SAGA.cancelled_event)
    return events


def _consumed(participant: str) -> list[str]:
    events = [
        e
        for step in ORDER_SAGA.steps
        if step.participant == participant
        for e in (step.trigger, *step.compensate_on)
    ]
    events += [r.trigger for r in ORDER_SAGA.reactions if r.participant == participant]
    return events


@dataclass(frozen=True)
class Accounts:
    """The definitions' users on this broker: ``role`` is the name in the file."""

    suffix: str
    services_vhost: str
    probe_vhost: str
    passwords: dict[str, str]
    address: str  # host:port of the broker they are on

    def user(self, role: str) -> str:
        return f"{role}-{self.suffix}"

    def url(self, role: str, vhost: str) -> str:
        user, password = quote(self.user(role), safe=""), quote(self.passwords[role], safe="")
        return f"amqp://{user}:{password}@{self.address}/{quote(vhost, safe='')}"

    def guest_url(self, vhost: str) -> str:
        return f"amqp://guest:guest@{self.address}/{quote(vhost, safe='')}"


def _for_this_run(document: dict[str, Any], suffix: str, vhosts: list[str]) -> dict[str, Any]:
    """The definitions with users renamed and every grant repeated on each of ``vhosts``;
    guest may also use them, for the test's own probes (it is in no grant of the file)."""
    users = [{**u, "name": f"{u['name']}-{suffix}"} for u in document["users"]]
    grants = {
        kind: [
            {**grant, "user": f"{grant['user']}-{suffix}", "vhost": vhost}
            for vhost in vhosts
            for grant in document[kind]
        ]
        for kind in ("permissions", "topic_permissions")
    }
    grants["permissions"] += [
        {"user": "guest", "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
        for v in vhosts
    ]
    exchanges = [{**e, "vhost": v} for v in vhosts for e in document["exchanges"]]
    return {
        **document,
        "users": users,
        "vhosts": [{"name": v} for v in vhosts],
        "exchanges": exchanges,
        **grants,
    }


@pytest.fixture(scope="module")
def accounts(private_rabbit: RabbitNode) -> Accounts:
    document = json.loads(DEFINITIONS.read_text())
    suffix = uuid.uuid4().hex[:8]
    vhosts = [f"sagakit-security-{suffix}-services", f"sagakit-security-{suffix}-probe"]
    generator = _generator()
    # From standard input: rabbitmqctl may run as another user, who cannot read our files.
    # Nothing is deleted afterwards: the private node goes away with the session.
    private_rabbit.ctl(
        "import_definitions", input=json.dumps(_for_this_run(document, suffix, vhosts))
    )
    return Accounts(
        suffix=suffix,
        services_vhost=vhosts[0],
        probe_vhost=vhosts[1],
        passwords={u["name"]: generator.local_dev_password(u["name"]) for u in document["users"]},
        address=private_rabbit.address,
    )


def _generator() -> Any:
    import importlib.util
    import sys

    name = "sagakit_deploy_generate_definitions"
    if name not in sys.modules:
        path = ROOT / "deploy" / "rabbitmq" / "generate_definitions.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


async def _outcome(connection: AbstractConnection, action: Action) -> str:
    """``allowed`` or ``refused``: what the broker said to ``action`` on a fresh channel."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        await action(channel)
    except aiormq.exceptions.ChannelAccessRefused:
        return "refused"
    finally:
        if not channel.is_closed:
            await channel.close()
    return "allowed"


def _publish(exchange: str, routing_key: str) -> Action:
    async def action(channel: AbstractChannel) -> None:
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key, mandatory=False)

    return action


def _get(queue: str) -> Action:
    async def action(channel: AbstractChannel) -> None:
        await (await channel.get_queue(queue, ensure=False)).get(no_ack=False, fail=False)

    return action


def _consume(queue: str) -> Action:
    async def action(channel: AbstractChannel) -> None:
        q = await channel.get_queue(queue, ensure=False)
        tag = await q.consume(_ignore)
        await q.cancel(tag)

    return action


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject(requeue=True)


def _bind(queue: str, routing_key: str) -> Action:
    async def action(channel: AbstractChannel) -> None:
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(ORDER_SAGA.exchange, routing_key=routing_key)

    return action


def _delete(queue: str) -> Action:
    async def action(channel: AbstractChannel) -> None:
        await channel.queue_delete(queue, if_unused=False, if_empty=False)

    return action


async def _declare_participant(channel: AbstractChannel, participant: str) -> None:
    """What a participant's service declares when it starts (sagakit's topology)."""
    topology = ParticipantTopology(participant, ORDER_SAGA.exchange)
    exchange = await channel.declare_exchange(
        ORDER_SAGA.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        dead_letter_exchange_name(participant), aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(
        dead_letter_queue_name(participant),
        durable=True,
        arguments=topology.dead_letter_queue().arguments,
    )
    await dlq.bind(dlx, routing_key="#")
    retries = await channel.declare_exchange(
        retry_exchange_name(participant), aio_pika.ExchangeType.DIRECT, durable=True
    )
    for event_type in _consumed(participant):
        work = topology.work_queue(event_type)
        queue = await channel.declare_queue(work.name, durable=True, arguments=work.arguments)
        await queue.bind(exchange, routing_key=event_type)
        await queue.bind(retries, routing_key=work.name)
        delay = topology.retry_queue(event_type)
        delayed = await channel.declare_queue(delay.name, durable=True, arguments=delay.arguments)
        await delayed.bind(retries, routing_key=delay.name)


async def _connect(url: str) -> AbstractConnection:
    return await aio_pika.connect(url, timeout=10)


# -- a service can do its whole job as its own user ----------------------------------


@contextlib.asynccontextmanager
async def _tracker_process(url: str, directory: Path, probe_url: str) -> AsyncIterator[None]:
    """The tracker as its own process (it is no participant, so not in ServiceProcesses)."""
    env = {
        **os.environ,
        "SAGAKIT_ENV": "production",
        "TRACKER_RABBITMQ_URL": url,
        "TRACKER_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/tracker.db",
    }
    for shared in ("RABBITMQ_URL", "RABBITMQ_URLS", "RABBITMQ_URL_FILE"):
        env.pop(shared, None)
    with (directory / "tracker.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "faststream", "run", "tracker_service.main:create_app", "--factory"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    probe = QueueProbe(probe_url)
    try:
        for _ in range(600):
            assert process.returncode is None, (directory / "tracker.log").read_text()[-3000:]
            if (await probe.consumers(TRACKER_QUEUE) or 0) >= 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the tracker did not start consuming")
        yield
        assert process.returncode is None, "the tracker died"
    finally:
        await probe.close()
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


def _tracked_events(directory: Path, saga_id: uuid.UUID) -> int:
    with contextlib.closing(sqlite3.connect(directory / "tracker.db")) as db:
        row = db.execute(
            "SELECT event_count FROM saga_tracker_sagas WHERE saga_id = ?", (str(saga_id),)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_each_service_runs_sagas_and_parks_bad_input_as_its_own_user(
    accounts: Accounts, tmp_path: Path
) -> None:
    vhost = accounts.services_vhost
    own_urls = {
        name: {f"{name.upper()}_RABBITMQ_URL": accounts.url(name, vhost)} for name in PARTICIPANTS
    }
    async with (
        # SAGAKIT_ENV=production: a service that fell back to guest would refuse to start.
        service_processes(
            accounts.guest_url(vhost),
            tmp_path,
            sqlite_databases(tmp_path),
            env={"SAGAKIT_ENV": "production"},
            service_env=own_urls,
        ) as procs,
        _tracker_process(accounts.url("tracker", vhost), tmp_path, accounts.guest_url(vhost)),
        SagaClient(accounts.url("saga-client", vhost), ORDER_SAGA, producer="security") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=90)
        # A reply_to would make a FastStream consumer publish an RPC reply through the default
        # exchange, which no service may write to: the broker would close its channel.
        baited = client.new_saga(sample_order(Scenario.FULFILLED))
        await client.publish_raw(
            baited.encode(),
            baited.event_type,
            headers=baited.amqp_headers(),
            message_id=str(baited.event_id),
            reply_to=queue_name("payment", "inventory.reserved"),
        )
        fulfilled = await client.start(sample_order(Scenario.FULFILLED))
        compensated = await client.start(sample_order(Scenario.UNREACHABLE))
        sagas = [baited.context.saga_id, fulfilled.context.saga_id, compensated.context.saga_id]
        ended = await watch.wait_all(sagas, timeout=45)
        assert event_types(ended[baited.context.saga_id])[-1] == "order.fulfilled"
        assert event_types(ended[fulfilled.context.saga_id])[-1] == "order.fulfilled"
        assert event_types(ended[compensated.context.saga_id]) == [
            "order.created",
            "inventory.reserved",
            "payment.processed",
            "shipment.created",
            "notification.failed",
            "shipment.cancelled",
            "payment.refunded",
            "inventory.released",
            "order.cancelled",
        ]
        # Parking writes to the service's own dead-letter exchange.
        admin = await _connect(accounts.url("saga-admin", vhost))
        try:
            channel = await admin.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(ORDER_SAGA.exchange, ensure=False)
            for participant in PARTICIPANTS:
                trigger = _consumed(participant)[0]
                await exchange.publish(aio_pika.Message(b"not json"), routing_key=trigger)
            for participant in PARTICIPANTS:
                parked = await _wait_parked(channel, participant)
                assert str(parked.headers.get(REASON_HEADER, "")).startswith("undecodable"), (
                    participant
                )
        finally:
            await admin.close()
        # The tracker, as its own user, saw every saga.
        for saga_id in sagas:
            for _ in range(50):
                if _tracked_events(tmp_path, saga_id) >= len(ended[saga_id]):
                    break
                await asyncio.sleep(0.1)
            assert _tracked_events(tmp_path, saga_id) >= len(ended[saga_id])
        # Nobody's channel was closed under it: every consumer is still there.
        assert all(procs.alive(name) for name in procs.names)
        probe = QueueProbe(accounts.guest_url(vhost))
        try:
            for participant in PARTICIPANTS:
                counts = await probe.counts(consumed_queues(ORDER_SAGA, participant))
                assert all(count == 1 for count in counts.values()), counts
            assert await probe.consumers(TRACKER_QUEUE) == 1
        finally:
            await probe.close()
        # The permissions are enough: the broker refused nothing any service tried.
        logs = [procs.log_path(name) for name in procs.names] + [tmp_path / "tracker.log"]
        refused = [log.name for log in logs if "ACCESS_REFUSED" in log.read_text(errors="replace")]
        assert refused == []


async def _wait_parked(
    channel: AbstractChannel, participant: str
) -> aio_pika.abc.AbstractIncomingMessage:
    queue = await channel.get_queue(dead_letter_queue_name(participant), ensure=False)
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing parked in {participant}'s dead-letter queue")


# -- and nothing else ----------------------------------------------------------------


async def test_each_account_publishes_exactly_its_own_event_types(accounts: Accounts) -> None:
    vhost = accounts.probe_vhost
    allowed = {p: _emitted(p) for p in PARTICIPANTS}
    allowed |= {"tracker": set(), "saga-client": {ORDER_SAGA.start_event}}
    seen: dict[str, set[str]] = {}
    for role, own in allowed.items():
        connection = await _connect(accounts.url(role, vhost))
        try:
            seen[role] = {
                event_type
                for event_type in EVENT_TYPES
                if await _outcome(connection, _publish(ORDER_SAGA.exchange, event_type))
                == "allowed"
            }
        finally:
            await connection.close()
        assert seen[role] == own, role
    # Every event type has exactly one publisher: nobody can forge another's outcome.
    for event_type in EVENT_TYPES:
        assert sum(event_type in events for events in seen.values()) == 1, event_type


async def test_no_account_but_the_operator_can_write_through_the_default_exchange(
    accounts: Accounts,
) -> None:
    # The default exchange reaches every queue by name, whatever the topic permissions say.
    vhost = accounts.probe_vhost
    targets = [
        queue_name("payment", "inventory.reserved"),
        queue_name("inventory", "order.created"),
    ]
    for role in [*PARTICIPANTS, "tracker", "saga-client"]:
        connection = await _connect(accounts.url(role, vhost))
        try:
            for target in targets:
                assert await _outcome(connection, _publish("", target)) == "refused", (role, target)
        finally:
            await connection.close()


async def test_a_service_declares_its_own_topology_and_cannot_touch_anothers(
    accounts: Accounts,
) -> None:
    vhost = accounts.probe_vhost
    connections = {p: await _connect(accounts.url(p, vhost)) for p in PARTICIPANTS}
    connections["tracker"] = await _connect(accounts.url("tracker", vhost))
    connections["saga-client"] = await _connect(accounts.url("saga-client", vhost))
    try:
        for participant in PARTICIPANTS:
            declared = await _outcome(
                connections[participant],
                functools.partial(_declare_participant, participant=participant),
            )
            assert declared == "allowed", participant
        refusals: list[tuple[str, str]] = []
        for owner in PARTICIPANTS:
            work = queue_name(owner, _consumed(owner)[0])
            own_actions: dict[str, Action] = {
                f"get {work}": _get(work),
                f"consume {work}": _consume(work),
                f"get {owner}.dlq": _get(dead_letter_queue_name(owner)),
                f"publish to {owner}.dlx": _publish(dead_letter_exchange_name(owner), work),
                f"publish to {owner}.retries": _publish(
                    retry_exchange_name(owner), retry_queue_name(work)
                ),
            }
            for label, action in own_actions.items():
                assert await _outcome(connections[owner], action) == "allowed", (owner, label)
            foreign_actions = {**own_actions, f"delete {work}": _delete(work)}
            for role, connection in connections.items():
                if role == owner:
                    continue
                for label, action in foreign_actions.items():
                    if await _outcome(connection, action) != "refused":
                        refusals.append((role, label))
        assert refusals == [], "allowed where it must be refused"
    finally:
        for connection in connections.values():
            await connection.close()


async def test_a_queue_binds_only_to_the_events_its_service_consumes(accounts: Accounts) -> None:
    vhost = accounts.probe_vhost
    for participant in PARTICIPANTS:
        connection = await _connect(accounts.url(participant, vhost))
        snoop = f"{participant}.snoop-{uuid.uuid4().hex[:6]}"
        try:
            consumed = set(_consumed(participant))
            assert await _outcome(connection, _bind(snoop, sorted(consumed)[0])) == "allowed"
            for routing_key in ["#", "*.*", *sorted(set(EVENT_TYPES) - consumed)]:
                outcome = await _outcome(connection, _bind(snoop, routing_key))
                assert outcome == "refused", (participant, routing_key)
            # Nor may it name a queue outside its own prefix.
            other = f"{'payment' if participant != 'payment' else 'shipping'}.snoop"
            assert await _outcome(connection, _bind(other, sorted(consumed)[0])) == "refused"
        finally:
            await connection.close()
    # The tracker sees every event; it may bind everything to a queue of its own.
    connection = await _connect(accounts.url("tracker", vhost))
    try:
        assert await _outcome(connection, _bind("tracker.events", "#")) == "allowed"
        assert await _outcome(connection, _bind("inventory.events", "#")) == "refused"
    finally:
        await connection.close()
