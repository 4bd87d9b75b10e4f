"""Dead letters on the real broker: parked with a reason, listed, replayed once fixed, purged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from sagakit import SagaContext
from sagakit.cli import app, load_plugins
from sagakit.client import DeadLetters, ParkedMessage
from sagakit.observability import saga_log_handler
from sagakit.observability._logging import unwatch_deliveries, watch_deliveries
from sagakit.testing import QueueProbe, ServiceProcesses, ServiceStartError, consumed_queues
from typer.testing import CliRunner, Result

from tests.conftest import fresh_broker_url

from .probe_flow import PROBE, Behaviour, Watch, probe_services, running

pytestmark = pytest.mark.integration


async def _wait_parked(dead_letters: DeadLetters, count: int) -> list[ParkedMessage]:
    async with asyncio.timeout(15):
        while len(entries := await dead_letters.parked()) < count:
            await asyncio.sleep(0.1)
    return entries


async def test_parked_messages_are_listed_replayed_and_purged(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour(second_fails=True, undo_transient=3)  # more than the budget of 2
    services = probe_services(rabbitmq_url, str(tmp_path), behaviour)
    async with (
        running(services),
        Watch(rabbitmq_url) as watch,
        DeadLetters(rabbitmq_url, services=["alpha", "beta"]) as dead_letters,
    ):
        await dead_letters.purge()
        started = await watch.start()
        await watch.exchange.publish(
            aio_pika.Message(b"\x00 not json"), routing_key="probe.started"
        )
        entries = await _wait_parked(dead_letters, 2)
        by_reason = {e.reason.split(":")[0]: e for e in entries}
        assert set(by_reason) == {"undecodable", "compensation_failed"}
        compensation = by_reason["compensation_failed"]
        assert compensation.saga_id == str(started.context.saga_id)
        assert compensation.event_type == "beta.failed"
        assert compensation.origin_queue == "alpha.beta.failed"
        assert compensation.first_failure_at
        # listing took nothing away
        assert len(await dead_letters.parked()) == 2

        # the dependency is back: replaying the compensation finishes the saga
        replayed = await dead_letters.replay([compensation.id])
        assert [r.id for r in replayed] == [compensation.id]
        assert await watch.until("probe.cancelled") == [
            "probe.started",
            "alpha.done",
            "beta.failed",
            "alpha.undone",
            "probe.cancelled",
        ]
        remaining = await dead_letters.parked()
        assert [e.reason.split(":")[0] for e in remaining] == ["undecodable"]

        assert await dead_letters.purge() == 1
        assert await dead_letters.parked() == []


# -- every way into the dead-letter queue, told apart and replayed to the end ------------

# Small, so that a consumer that keeps dying reaches the limit after two deliveries.
DELIVERY_LIMIT = 1
SPEC = "tests.integration.probe_flow:PROBE"


@pytest.fixture(scope="module")
def own_vhost_url() -> Iterator[str]:
    # The probe's work queues are declared with a delivery limit of their own here; the
    # session's virtual host already has them with the default one.
    with fresh_broker_url() as url:
        yield url


def _probe_processes(url: str, directory: Path) -> ServiceProcesses:
    return ServiceProcesses(
        {name: (name, f"tests.integration.probe_app:{name}") for name in ("alpha", "beta")},
        spec=PROBE,
        url=url,
        log_dir=directory / "logs",
        env={"PROBE_DIR": str(directory), "PROBE_DELIVERY_LIMIT": str(DELIVERY_LIMIT)},
        grace=5.0,
    )


async def _parked_for(
    procs: ServiceProcesses, dead_letters: DeadLetters, saga: SagaContext
) -> ParkedMessage:
    """Restart whatever dies (as a supervisor would) until the saga's message is parked."""
    probe = QueueProbe(procs.url)
    try:
        async with asyncio.timeout(120):
            while True:
                for name in procs.names:
                    if not procs.alive(name):
                        await _start_again(procs, probe, name)
                found = [e for e in await dead_letters.parked() if e.saga_id == str(saga.saga_id)]
                if found:
                    [entry] = found
                    return entry
                await asyncio.sleep(0.2)
    finally:
        await probe.close()


async def _start_again(procs: ServiceProcesses, probe: QueueProbe, name: str) -> None:
    # Once the broker has let go of the dead consumer, so that the new one is told apart.
    queues = consumed_queues(PROBE, name)
    while any((await probe.counts(queues)).values()):
        await asyncio.sleep(0.1)
    with contextlib.suppress(ServiceStartError):  # it may die again on the same message
        await procs.start(name, timeout=60)


async def _saga_cli(*arguments: str) -> Result:
    load_plugins()
    # The command runs its own event loop: on a thread of its own, beside this test's.
    return await asyncio.to_thread(
        CliRunner().invoke, app, ["dlq", *arguments], env={"COLUMNS": "250"}
    )


@pytest.mark.timeout(300)
async def test_each_way_into_the_dead_letter_queue_is_told_apart_and_replayed_to_the_end(
    own_vhost_url: str, tmp_path: Path
) -> None:
    url = own_vhost_url
    parked_saga = SagaContext.start("probe")  # sagakit parks it: the undo keeps failing
    retried_saga = SagaContext.start("probe")  # retried through the delay queue, then dies
    crashing_saga = SagaContext.start("probe")  # the consumer dies at once, every time
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                str(parked_saga.saga_id): {"second": ["fail"], "undo_first": ["transient"] * 6},
                str(retried_saga.saga_id): {
                    "second": ["fail"],
                    "undo_first": ["transient"] + ["crash"] * 20,
                },
                str(crashing_saga.saga_id): {"second": ["crash"] * 20},
            }
        )
    )
    connection = ["--url", url, "--spec", SPEC]
    async with (
        _probe_processes(url, tmp_path) as procs,
        Watch(url) as watch,
        DeadLetters(url, services=["alpha", "beta"]) as dead_letters,
    ):
        await procs.start(timeout=90)
        # One at a time: a process that dies returns every message it holds, and counts a
        # delivery against each.
        await watch.start(context=parked_saga)
        parked = await _parked_for(procs, dead_letters, parked_saga)
        await watch.start(context=retried_saga)
        retried = await _parked_for(procs, dead_letters, retried_saga)
        await watch.start(context=crashing_saga)
        crashed = await _parked_for(procs, dead_letters, crashing_saga)

        assert (parked.parked_by, parked.reason_code) == ("sagakit", "compensation_failed")
        assert parked.broker_reason == ""
        assert parked.origin_queue == "alpha.beta.failed"
        assert parked.event_type == "beta.failed"
        assert [(d.queue, d.reason) for d in parked.deaths] == [
            ("alpha.beta.failed.retry", "expired")
        ]

        # Dead-lettered by the broker after passing through the delay queue: the work
        # queue is the origin, and the broker's own reason is the delivery limit.
        assert (retried.parked_by, retried.broker_reason) == ("broker", "delivery_limit")
        assert retried.reason == "delivery_limit: dead-lettered by the broker after 1 retry"
        assert retried.origin_queue == "alpha.beta.failed"
        assert retried.event_type == "beta.failed"
        assert [(d.queue, d.reason) for d in retried.deaths] == [
            ("alpha.beta.failed", "delivery_limit"),
            ("alpha.beta.failed.retry", "expired"),
        ]
        assert retried.first_failure_at < retried.deaths[0].time  # the first retry, earlier

        assert (crashed.parked_by, crashed.broker_reason) == ("broker", "delivery_limit")
        assert crashed.reason == "delivery_limit: dead-lettered by the broker"
        assert crashed.origin_queue == "beta.alpha.done"
        assert crashed.event_type == "alpha.done"
        assert [(d.queue, d.reason) for d in crashed.deaths] == [
            ("beta.alpha.done", "delivery_limit")
        ]
        assert crashed.first_failure_at == crashed.deaths[0].time

        table = await _saga_cli("list", *connection)
        assert table.exit_code == 0, table.output
        print(table.stdout)
        listed = await _saga_cli("list", "--group-by", "reason", "--json", *connection)
        assert listed.exit_code == 0, listed.output
        assert {row["reason"]: row["count"] for row in json.loads(listed.stdout)} == {
            "delivery_limit": 2,
            "compensation_failed": 1,
        }
        only_broker = await _saga_cli("list", "--reason", "delivery_limit", "--json", *connection)
        assert {e["id"] for e in json.loads(only_broker.stdout)} == {retried.id, crashed.id}
        by_saga = await _saga_cli(
            "list",
            "--saga",
            str(crashed.saga_id),
            "--event-type",
            "alpha.done",
            "--json",
            *connection,
        )
        assert [e["id"] for e in json.loads(by_saga.stdout)] == [crashed.id]

        shown = await _saga_cli("show", retried.id, *connection)
        assert shown.exit_code == 0, shown.output
        for line in (
            f"reason         {retried.reason}",
            "parked by      broker delivery_limit",
            "origin queue   alpha.beta.failed",
            "  alpha.beta.failed: delivery_limit x1",
            "  alpha.beta.failed.retry: expired x1",
            f'  x-saga-id: "{retried_saga.saga_id}"',
            '"event_type": "beta.failed"',
        ):
            assert line in shown.stdout, (line, shown.stdout)
        [as_json] = json.loads((await _saga_cli("show", retried.id, "--json", *connection)).stdout)
        assert json.loads(as_json["body"])["event_type"] == "beta.failed"
        assert as_json["deaths"][0]["reason"] == "delivery_limit"

        # Replayed while its cause is still there, a message comes back parked again: the
        # same first failure, one replay more.
        again = await _saga_cli("replay", parked.id, *connection)
        assert again.exit_code == 0, again.output
        assert f"replayed alpha {parked.id} -> alpha.beta.failed" in again.stdout
        reparked = await _parked_for(procs, dead_letters, parked_saga)
        assert reparked.replays == 1
        assert reparked.first_failure_at == parked.first_failure_at

        script.write_text("{}")  # every handler healed
        replayed = await _saga_cli("replay", "--all", *connection)
        assert replayed.exit_code == 0, replayed.output
        print(replayed.stdout)
        assert "replayed 3 message(s)" in replayed.stdout
        for entry in (reparked, retried, crashed):
            assert f"-> {entry.origin_queue}" in replayed.stdout
        assert (await watch.saga_until(parked_saga, "probe.cancelled"))[-2:] == [
            "alpha.undone",
            "probe.cancelled",
        ]
        assert (await watch.saga_until(retried_saga, "probe.cancelled"))[-2:] == [
            "alpha.undone",
            "probe.cancelled",
        ]
        assert (await watch.saga_until(crashing_saga, "probe.finished"))[-1] == "probe.finished"
        assert await dead_letters.parked() == []
        assert all(procs.alive(name) for name in procs.names)


async def test_unknown_services_and_ids_are_errors_with_exit_codes(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    connection = ["--url", rabbitmq_url, "--spec", SPEC]
    async with running(probe_services(rabbitmq_url, str(tmp_path), Behaviour())):
        unknown_service = await _saga_cli("list", "--service", "bogus", *connection)
        assert unknown_service.exit_code == 2
        assert "bogus" in unknown_service.output
        for command in ("replay", "show", "purge"):
            extra = ["--yes"] if command == "purge" else []
            unknown_id = await _saga_cli(command, "no-such-id", *extra, *connection)
            assert unknown_id.exit_code == 1, (command, unknown_id.output)
            assert "no parked message with id no-such-id" in unknown_id.output
        async with DeadLetters(rabbitmq_url, services=["alpha"]) as dead_letters:
            await dead_letters.purge()
            nothing = await _saga_cli("list", "--service", "alpha", *connection)
            assert nothing.exit_code == 0
            assert "0 parked message(s)" in nothing.stdout

            # Parked from a queue the service does not have: a replay cannot send it back,
            # says so and leaves it parked; a selective purge removes only what it selects.
            async with Watch(rabbitmq_url) as watch:
                dlx = await watch.channel.get_exchange("alpha.dlx", ensure=False)
                origins = ("alpha.gone", "alpha.gone", "alpha.probe.started")
                for number, origin in enumerate(origins):
                    await dlx.publish(
                        aio_pika.Message(
                            b"{}",
                            message_id=f"m{number}",
                            headers={
                                "x-saga-dead-letter-reason": f"undecodable: case {number}",
                                "x-saga-origin-queue": origin,
                                "x-saga-parked-at": "2026-11-24T10:00:00+00:00",
                            },
                        ),
                        routing_key=origin,
                    )
            await _wait_parked(dead_letters, 3)
            stuck = await _saga_cli("replay", "m0", *connection)
            assert stuck.exit_code == 1
            assert "not replayed alpha m0: alpha.gone did not take it" in stuck.output
            assert "replayed 0 message(s)" in stuck.stdout
            as_json = await _saga_cli("replay", "m0", "--json", *connection)
            assert as_json.exit_code == 1
            document = json.loads(as_json.stdout)
            assert document["replayed"] == []
            [failed] = document["failed"]
            assert (failed["service"], failed["id"]) == ("alpha", "m0")
            assert failed["problem"].startswith("alpha.gone did not take it")
            purged = await _saga_cli(
                "purge", "--reason", "undecodable: case 1", "--yes", "--json", *connection
            )
            assert purged.exit_code == 0, purged.output
            assert json.loads(purged.stdout) == {"purged": 1}
            assert sorted(e.id for e in await dead_letters.parked()) == ["m0", "m2"]
            assert await dead_letters.purge() == 2


async def test_a_message_without_the_saga_id_in_its_properties_is_named_by_its_envelope(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    # A plain AMQP client that uses correlation ids its own way and sets no x-saga-id: the
    # log line about parking it, the parked copy and the DLQ listing name the envelope's.
    saga = SagaContext.start("probe")
    stream = io.StringIO()
    handler = saga_log_handler(service="alpha", log_format="json", stream=stream)
    runtime_logger = logging.getLogger("sagakit.runtime")
    runtime_logger.addHandler(handler)
    services = probe_services(rabbitmq_url, str(tmp_path), Behaviour())
    try:
        async with (
            running(services),
            Watch(rabbitmq_url) as watch,
            DeadLetters(rabbitmq_url, services=["alpha"]) as dead_letters,
        ):
            # observe() registers the delivery source when the app starts; running() does not
            source = watch_deliveries(
                services[0].broker.context, {"alpha.probe.started": ("probe.started", "first")}
            )
            await dead_letters.purge()
            body = {"event_type": "probe.started", "context": {"saga_id": str(saga.saga_id)}}
            await watch.exchange.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),  # schema-invalid: no payload
                    correlation_id="client-correlation-17",
                    message_id="client-message-17",
                ),
                routing_key="probe.started",
            )
            [entry] = await _wait_parked(dead_letters, 1)
            unwatch_deliveries(source)
            assert await dead_letters.purge() == 1  # the virtual host is the session's
    finally:
        runtime_logger.removeHandler(handler)
    assert entry.saga_id == str(saga.saga_id)
    assert entry.event_type == "probe.started"
    assert entry.id == "client-message-17"
    parking = [
        line
        for line in map(json.loads, stream.getvalue().splitlines())
        if line["message"].startswith("parking message")
    ]
    assert [(line["saga_id"], line["event_type"], line["step"]) for line in parking] == [
        (str(saga.saga_id), "probe.started", "first")
    ]
