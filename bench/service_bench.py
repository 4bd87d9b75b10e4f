"""One service alone: CPU per message on a preloaded queue, and where it goes.

    uv run python bench/service_bench.py inventory            # 3000 messages
    uv run python bench/service_bench.py payment --messages 5000 --profile
    uv run python bench/service_bench.py inventory --store postgresql

The service's forward work queue is filled while the service is stopped (its queues are
declared by starting it once), then the service is started and drains it: the CPU time of
its process per message is the figure, free of the other services and of a driver. Each
service gets the event its step consumes (inventory ``order.created``, payment
``inventory.reserved``, shipping ``payment.processed``, notification ``shipment.created``),
for fulfilled orders; a queue bound with ``#`` takes what it emits. ``--profile`` samples
the service with py-spy (``--gil``) and prints the cost by part. The machine is shared:
repeat a run (``--runs``) and read the spread, not one figure. ``--store postgresql``
gives the service a fresh PostgreSQL database (dropped after) instead of a SQLite file;
``--store both`` alternates the two, run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
from _infra import throwaway_databases, throwaway_vhost
from _procstat import cpu_seconds, process_tree
from _profile import Profiler
from order_contracts import (
    ORDER_SAGA,
    InventoryReserved,
    PaymentProcessed,
    ShipmentCreated,
)
from order_contracts.samples import sample_order
from sagakit import Envelope, StepOutcome, StepRecord, utc_now
from sagakit.client import SagaClient
from sagakit.testing import ServiceProcesses

STOCK = {"SKU-APPLE": 10**9, "SKU-PEAR": 10**9, "SKU-PLUM": 10**9, "SKU-RARE": 0}
# The step that comes before each service's, and who ran it.
UPSTREAM = {
    "payment": ("reserve_stock", "inventory"),
    "shipping": ("charge_payment", "payment"),
    "notification": ("ship_order", "shipping"),
}
CONSUMES = {
    "inventory": "order.created",
    "payment": "inventory.reserved",
    "shipping": "payment.processed",
    "notification": "shipment.created",
}


def event_for(service: str, client: SagaClient) -> Envelope[Any]:
    """A fulfilled order's event that ``service``'s step consumes."""
    order = sample_order()
    start = client.new_saga(order)
    if service == "inventory":
        return start
    payload: Any
    if service == "payment":
        payload = InventoryReserved(order=order, reservation_id=str(uuid.uuid4()))
    elif service == "shipping":
        amount = order.total()
        payload = PaymentProcessed(
            order=order, payment_id=str(uuid.uuid4()), amount=amount, currency=order.currency
        )
    else:
        payload = ShipmentCreated(
            order=order, shipment_id=str(uuid.uuid4()), tracking_number="TRK-BENCH"
        )
    step, participant = UPSTREAM[service]
    record = StepRecord(
        step=step, participant=participant, outcome=StepOutcome.COMPLETED, at=utc_now()
    )
    context = start.context.followed_by(start.event_id, record)
    return Envelope.new(payload, context=context, producer=participant)


async def one_run(
    service: str,
    *,
    url: str,
    database_url: str,
    messages: int,
    work_dir: Path,
    profile_dir: Path | None,
) -> dict[str, Any]:
    queue = f"{service}.{CONSUMES[service]}"
    procs = ServiceProcesses(
        {service: (service, f"{service}_service.main:create_app")},
        spec=ORDER_SAGA,
        url=url,
        log_dir=work_dir / "logs",
        env={"INVENTORY_STOCK": json.dumps(STOCK)},
        service_env={service: {f"{service.upper()}_DATABASE_URL": database_url}},
    )
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            ORDER_SAGA.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        sink = await channel.declare_queue("service-bench-sink", durable=True)
        await sink.bind(exchange, "#")
        async with procs:
            await procs.start(timeout=60)  # declares its queues
            await procs.stop()
            async with SagaClient(url, ORDER_SAGA, producer="service-bench") as client:
                for _ in range(messages):
                    await client.publish(event_for(service, client))
            await procs.start(timeout=60)
            pid = procs.pid(service)
            assert pid is not None
            tree = process_tree(pid)
            profiler = Profiler(profile_dir) if profile_dir is not None else None
            if profiler is not None:
                profiler.start(service, pid)
            cpu_before, began = cpu_seconds(tree), time.monotonic()
            await _drained(channel, queue)
            await asyncio.sleep(0.3)  # the last deliveries' publishes and acks
            cpu, wall = cpu_seconds(tree) - cpu_before, time.monotonic() - began
            summary = profiler.stop().get(service) if profiler is not None else None
        emitted = await _queued(channel, sink.name)
    finally:
        await connection.close()
    # The sink has each event published to the service and each event the service emitted.
    if emitted != 2 * messages:
        raise SystemExit(f"{service} emitted {emitted - messages} events for {messages}")
    return {
        "messages": messages,
        "cpu_ms_per_message": round(1000 * cpu / messages, 3),
        "messages_per_second": round(messages / wall, 1),
        "sink_messages": emitted,
        "parts": summary["parts"] if summary else {},
    }


async def _queued(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _drained(channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
    # Polling: the broker has no "queue empty" event to wait on.
    while True:
        if not await _queued(channel, queue):
            return
        await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    runs: dict[str, list[dict[str, Any]]] = {store: [] for store in stores}
    with tempfile.TemporaryDirectory(prefix="service-bench-") as work:
        for number in range(1, args.runs + 1):
            for store in stores:
                with throwaway_vhost(args.url, f"{args.service}-{number}") as url:
                    async with _database(store, args, Path(work)) as database_url:
                        result = await one_run(
                            args.service,
                            url=url,
                            database_url=database_url,
                            messages=args.messages,
                            work_dir=Path(work),
                            profile_dir=args.output_dir / "profile" if args.profile else None,
                        )
                runs[store].append(result)
                print(
                    f"{args.service} {store} run {number}: {result['cpu_ms_per_message']:.3f}"
                    f" ms CPU per message, {result['messages_per_second']:.0f} messages/s",
                    flush=True,
                )
    return runs


@contextlib.asynccontextmanager
async def _database(store: str, args: argparse.Namespace, work: Path) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{work / f'{args.service}-{uuid.uuid4().hex[:6]}.db'}"
        return
    async with throwaway_databases(args.postgres_url, [args.service]) as databases:
        yield databases[args.service]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("service", choices=sorted(CONSUMES))
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="sample with py-spy (slower)")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin URL of the server that --store postgresql makes its database on",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(__file__).parent / "results" / "service",
        help="where --profile writes the collapsed stacks (<service>.collapsed)",
    )
    args = parser.parse_args(argv)
    by_store = asyncio.run(bench(args))
    for store, runs in by_store.items():
        figures = [r["cpu_ms_per_message"] for r in runs]
        print(
            f"{args.service} {store}: CPU per message median {statistics.median(figures):.3f}"
            f" ms (min {min(figures):.3f}, max {max(figures):.3f}, {len(runs)} runs)"
        )
        if runs[-1]["parts"]:
            print(f"by part ({store}, last run):")
            for name, share in runs[-1]["parts"].items():
                print(f"  {share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
