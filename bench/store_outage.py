"""One participant's store goes away while sagas are in flight; what becomes of them.

``uv run python bench/store_outage.py --participant payment --outage 95 --sagas 300``
starts the four services as processes (SQLite, but the chosen participant on a private
PostgreSQL cluster of its own, ``sagakit_lab.postgres``), starts the sagas at full speed,
stops that cluster with ``pg_ctl -m immediate`` a second later, starts it again after the
outage, and waits for every saga to end. ``--fault full`` or ``--fault read-only`` puts the
participant's SQLite file on a small volume of its own (``sagakit_lab.volumes``) instead,
filled or made read-only for the outage. It prints each saga's outcome against the one its
order asks for (``order_contracts.samples``), the cancellations by reason, and what the
dead-letter queues hold; it exits 1 when a saga did not end as expected, was cancelled for
another reason than its order's, or a message was dead-lettered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika
from _infra import throwaway_vhost
from _load import full_speed
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, sample_order
from saga_bench import BENCH_STOCK, DEFAULT_MIX, PARTICIPANTS, SagaSource, observed
from sagakit.client import SagaClient
from sagakit.testing import ServiceProcesses
from sagakit_lab.postgres import PostgresCluster
from sagakit_lab.volumes import SmallVolume


class Ends:
    """Each saga's terminal event, with the cancellation's reason and failed step."""

    def __init__(self) -> None:
        self.ends: dict[str, tuple[str, str | None, str | None]] = {}
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def attach(self, url: str) -> None:
        self._connection = await aio_pika.connect_robust(url)
        channel = await self._connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(
            ORDER_SAGA.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for terminal in ORDER_SAGA.terminal_events():
            await queue.bind(exchange, routing_key=terminal)
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        payload = body.get("payload", {})
        self.ends.setdefault(
            str(message.correlation_id),
            (str(message.routing_key), payload.get("failed_step"), payload.get("reason")),
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


class _PostgresOutage:
    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster

    async def begin(self) -> None:
        await self.cluster.stop_async(mode="immediate")

    async def end(self) -> None:
        await self.cluster.start_async()


class _VolumeOutage:
    def __init__(self, volume: SmallVolume, kind: str) -> None:
        self.volume = volume
        self.kind = kind

    async def begin(self) -> None:
        await asyncio.to_thread(self.volume.fill if self.kind == "full" else self.volume.read_only)

    async def end(self) -> None:
        await asyncio.to_thread(self.volume.free if self.kind == "full" else self.volume.writable)


def dead_letters(url: str) -> dict[str, int]:
    vhost = unquote(urlsplit(url).path.lstrip("/")) or "/"
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith(".dlq"):
            counts[parts[0]] = int(parts[1])
    return counts


async def run(args: argparse.Namespace) -> dict[str, object]:
    with throwaway_vhost(args.url, "outage") as url:
        workdir = Path(tempfile.mkdtemp(prefix="store-outage-"))
        try:
            databases = {p: f"sqlite+aiosqlite:///{workdir}/{p}.db" for p in PARTICIPANTS}
            if args.fault == "pg-stop":
                async with PostgresCluster() as cluster:
                    databases[args.participant] = await cluster.create_database_async(
                        args.participant
                    )
                    return await _run(args, url, workdir, databases, _PostgresOutage(cluster))
            with SmallVolume(size_mb=32) as volume:
                databases[args.participant] = (
                    f"sqlite+aiosqlite:///{volume.path}/{args.participant}.db"
                )
                return await _run(args, url, workdir, databases, _VolumeOutage(volume, args.fault))
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"logs and databases: {workdir}", file=sys.stderr)


async def _run(
    args: argparse.Namespace,
    url: str,
    workdir: Path,
    databases: dict[str, str],
    fault: _PostgresOutage | _VolumeOutage,
) -> dict[str, object]:
    procs = ServiceProcesses(
        {p: (p, f"{p}_service.main:create_app") for p in PARTICIPANTS},
        spec=ORDER_SAGA,
        url=url,
        log_dir=workdir / "logs",
        env={"INVENTORY_STOCK": json.dumps(BENCH_STOCK)},
        service_env={p: {f"{p.upper()}_DATABASE_URL": databases[p]} for p in PARTICIPANTS},
        grace=15.0,
    )
    source = SagaSource(DEFAULT_MIX, args.seed)
    ends = Ends()
    async with procs, SagaClient(url, ORDER_SAGA, producer="store-outage") as client:
        await ends.attach(url)
        try:
            await procs.start(timeout=120)
            scenarios = source.scenarios(args.sagas, "outage")
            sagas = [(client.new_saga(sample_order(s)), "") for s in scenarios]
            expected = {
                str(envelope.context.saga_id): EXPECTED_FAILED_STEP[scenario]
                for (envelope, _), scenario in zip(sagas, scenarios, strict=True)
            }
            async with observed(url, ORDER_SAGA.exchange) as observer:
                running = asyncio.create_task(
                    full_speed(client, observer, sagas, in_flight=args.in_flight, timeout=3600)
                )
                await asyncio.sleep(1.0)
                await fault.begin()
                stopped = time.monotonic()
                await asyncio.sleep(args.outage)
                await fault.end()
                outage = time.monotonic() - stopped
                await running
            await asyncio.sleep(2.0)
        finally:
            await ends.close()
    wrong = []
    reasons: Counter[str] = Counter()
    for saga, failed_step in expected.items():
        end = ends.ends.get(saga)
        if end is None:
            wrong.append((saga, "no end"))
            continue
        terminal, step, reason = end
        if terminal == ORDER_SAGA.cancelled_event:
            reasons[f"{step}: {reason}"] += 1
        if failed_step is None and terminal != ORDER_SAGA.completed_event:
            wrong.append((saga, f"cancelled at {step} ({reason}), should be fulfilled"))
        elif failed_step is not None and (terminal, step) != (
            ORDER_SAGA.cancelled_event,
            failed_step,
        ):
            wrong.append((saga, f"{terminal} {step} {reason}, should fail at {failed_step}"))
    await asyncio.sleep(1.0)
    parked = dead_letters(url)
    return {
        "participant": args.participant,
        "fault": args.fault,
        "outage_seconds": round(outage, 1),
        "sagas": args.sagas,
        "ended": len(ends.ends),
        "fulfilled": sum(1 for e in ends.ends.values() if e[0] == ORDER_SAGA.completed_event),
        "cancelled_by_reason": dict(reasons),
        "not_as_expected": len(wrong),
        "examples": wrong[:5],
        "dead_lettered": parked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participant", choices=PARTICIPANTS, default="payment")
    parser.add_argument("--outage", type=float, default=95.0, help="seconds")
    parser.add_argument("--fault", choices=("pg-stop", "full", "read-only"), default="pg-stop")
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep logs and databases")
    parser.add_argument(
        "--url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    report = asyncio.run(run(parser.parse_args()))
    print(json.dumps(report, indent=2))
    parked = report["dead_lettered"]
    bad = bool(report["not_as_expected"]) or (isinstance(parked, dict) and any(parked.values()))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
