"""How many events go on the wire twice under plain load, with no fault at all (should be 0).

``uv run python bench/wire_copies.py --sagas 5000`` starts the four services as processes
(SQLite, or ``--store postgresql``) on a throwaway virtual host, binds a queue of its own to
the flow's exchange before the first saga, runs the sagas at full speed, waits until every
saga has ended and then long enough for the outbox relay's stale pass to have run several
times over every row, and counts each message id it saw. A copy means the relay published a
row again although nothing failed: the race between its stale pass and the background sent
marks that issue #12 item 6 is about. It prints the counts and exits 1 when there is a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aio_pika
from _infra import throwaway_databases, throwaway_vhost
from _load import full_speed
from order_contracts import ORDER_SAGA
from saga_bench import BENCH_STOCK, DEFAULT_MIX, PARTICIPANTS, SagaSource, observed
from sagakit.client import SagaClient
from sagakit.testing import ServiceProcesses

# The relay's stale pass takes rows older than 2 s every 0.5 s: this is many passes.
_SETTLE_SECONDS = 8.0


class Tap:
    """Counts every message id published on the flow's exchange."""

    def __init__(self) -> None:
        self.copies: Counter[tuple[str, str]] = Counter()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def attach(self, url: str, exchange: str) -> None:
        self._connection = await aio_pika.connect_robust(url)
        channel = await self._connection.channel(publisher_confirms=False)
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(declared, routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.copies[(str(message.routing_key), message.message_id or "")] += 1

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    with throwaway_vhost(args.url, "copies") as url:
        workdir = Path(tempfile.mkdtemp(prefix="wire-copies-"))
        try:
            if args.store == "postgresql":
                async with throwaway_databases(args.postgres_url, PARTICIPANTS) as databases:
                    return await _run(args, url, workdir, databases)
            databases = {p: f"sqlite+aiosqlite:///{workdir}/{p}.db" for p in PARTICIPANTS}
            return await _run(args, url, workdir, databases)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(
    args: argparse.Namespace, url: str, workdir: Path, databases: dict[str, str]
) -> dict[str, object]:
    procs = ServiceProcesses(
        {p: (p, f"{p}_service.main:create_app") for p in PARTICIPANTS},
        spec=ORDER_SAGA,
        url=url,
        log_dir=workdir / "logs",
        env={
            "INVENTORY_STOCK": json.dumps(BENCH_STOCK),
            **dict(item.split("=", 1) for item in args.service_env),
        },
        service_env={p: {f"{p.upper()}_DATABASE_URL": databases[p]} for p in PARTICIPANTS},
        grace=15.0,
    )
    tap = Tap()
    source = SagaSource(DEFAULT_MIX, args.seed)
    async with procs, SagaClient(url, ORDER_SAGA, producer="wire-copies") as client:
        await tap.attach(url, ORDER_SAGA.exchange)
        try:
            await procs.start(timeout=120)
            async with observed(url, ORDER_SAGA.exchange) as observer:
                began = time.perf_counter()
                phase = await full_speed(
                    client,
                    observer,
                    source.sagas(client, args.sagas, "copies"),
                    in_flight=args.in_flight,
                    timeout=600,
                )
                elapsed = time.perf_counter() - began
            await asyncio.sleep(_SETTLE_SECONDS)
        finally:
            await tap.close()
    twice = {key: n for key, n in tap.copies.items() if n > 1}
    by_type = Counter(routing_key for routing_key, _ in twice)
    return {
        "store": args.store,
        "sagas": args.sagas,
        "ended": phase.sagas,
        "seconds": round(elapsed, 1),
        "sagas_per_second": round(args.sagas / elapsed, 1),
        "events_seen": sum(tap.copies.values()),
        "distinct_events": len(tap.copies),
        "events_seen_more_than_once": len(twice),
        "extra_copies": sum(n - 1 for n in twice.values()),
        "by_type": dict(by_type),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every service process (repeatable), e.g. "
        "PYTHONPATH=/elsewhere/shared to count another sagakit's copies",
    )
    parser.add_argument(
        "--url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    report = asyncio.run(run(parser.parse_args()))
    print(json.dumps(report, indent=2))
    sys.exit(1 if report["events_seen_more_than_once"] else 0)


if __name__ == "__main__":
    main()
