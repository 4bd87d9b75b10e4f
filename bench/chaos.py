"""Chaos run: thousands of sagas under faults, and proof that nothing was lost or done twice.

    uv run python bench/chaos.py --sagas 1000 --seed 42 [--store postgresql] [--json out.json]

Starts a RabbitMQ node of its own (sagakit_lab: free ports, data in the work directory; it
needs ``rabbitmq-server`` installed, and never touches a broker it did not start), the four
participants as processes on it (their broker URL points at a local TCP proxy), declares an
independent ledger queue bound ``#`` to the flow's exchange, then starts sagas at a steady
rate over a seeded order mix (every business failure of the reference rules) while a
seeded plan kills services with SIGKILL, arms crash points, restarts the broker (the run's
own node, stopped and started again),
cuts and slows the services' connections, publishes copies of events seen on the exchange
and publishes garbage under real routing keys. Then it waits for every saga to end, and
checks each service's own store, the dead-letter queues and the ledger against each other.

Exits 1 when anything was lost, applied twice or ended against the rules; 2 on a run that
could not be carried out. The seed and the table go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from _chaos_audit import audit
from _chaos_crashes import CrashPoints
from _chaos_faults import Fault, FaultKind, Injector, plan_faults, until_confirmed
from _chaos_ledger import Ledger
from _chaos_orders import INITIAL_STOCK, PlannedOrder, plan_order
from _chaos_report import print_report, report_dict
from _chaos_stores import read_stores
from order_contracts import ORDER_SAGA
from sagakit import QueueProbe, SagaClient, ServiceProcesses, consumed_queues
from sagakit.broker._topology import retry_queue_name
from sagakit.client._dead_letters import DeadLetters
from sagakit_lab import RabbitNode
from tcp_proxy import TcpProxy

__all__ = ["ChaosOptions", "main", "run_chaos"]

logger = logging.getLogger("chaos")

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """How a run goes; ``seed`` fixes the orders, the fault plan and the choices made."""

    sagas: int = 1000
    seed: int = 0
    rate: float = 8.0
    store: str = "sqlite"
    postgres_url: str = DEFAULT_POSTGRES
    workdir: Path | None = None
    settle_timeout: float = 300.0
    service_log_level: str = "INFO"


# -- the broker and the databases ------------------------------------------------------


@contextlib.asynccontextmanager
async def private_broker(workdir: Path) -> AsyncIterator[RabbitNode]:
    """A RabbitMQ node of the run's own, stopped afterwards: the run restarts its broker,
    which it may do only to one it started."""
    node = RabbitNode(workdir / "rabbitmq")
    await asyncio.to_thread(node.start)
    try:
        yield node
    finally:
        await asyncio.to_thread(node.stop)


@contextlib.asynccontextmanager
async def databases(options: ChaosOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """One database per participant: SQLite files in ``workdir``, or fresh PostgreSQL ones."""
    if options.store == "sqlite":
        yield {name: f"sqlite+aiosqlite:///{workdir}/{name}.db" for name in PARTICIPANTS}
        return
    import asyncpg  # type: ignore[import-untyped]

    names = {name: f"sagakit_chaos_{name}_{uuid.uuid4().hex[:8]}" for name in PARTICIPANTS}
    admin = await asyncpg.connect(options.postgres_url, timeout=10)
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
        base = options.postgres_url.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        yield {service: f"{base}/{name}" for service, name in names.items()}
    finally:
        for name in names.values():
            with contextlib.suppress(Exception):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _work_and_retry_queues() -> list[str]:
    queues = []
    for participant in PARTICIPANTS:
        for queue in consumed_queues(ORDER_SAGA, participant):
            queues += [queue, retry_queue_name(queue)]
    return queues


async def _queued_messages(url: str, queues: Sequence[str]) -> int:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        total = 0
        channel = await connection.channel()
        for queue in queues:
            declared = await channel.declare_queue(queue, passive=True)
            total += declared.declaration_result.message_count or 0
        return total
    finally:
        await connection.close()


# -- phases ------------------------------------------------------------------------------


async def _consumers(url: str) -> dict[str, int]:
    """Consumers per work queue: one each, or a service is missing or a zombie holds one."""
    queues = tuple(q for p in PARTICIPANTS for q in consumed_queues(ORDER_SAGA, p))
    probe = QueueProbe(url)
    try:
        return await probe.counts(queues)
    finally:
        await probe.close()


async def _parked_saga_ids(url: str) -> set[str]:
    async with DeadLetters(url, services=PARTICIPANTS) as dead_letters:
        return {entry.saga_id for entry in await dead_letters.parked() if entry.saga_id}


async def _wait_for_end(
    ledger: Ledger, planned: dict[str, PlannedOrder], url: str, *, within: float
) -> None:
    """Until every saga has ended or is parked (or ``within`` s: the audit names the rest)."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + within
    parked: set[str] = set()
    while True:
        pending = set(planned) - ledger.ended - parked
        remaining = give_up_at - loop.time()
        logger.info("%d of %d sagas ended, %d parked", len(ledger.ended), len(planned), len(parked))
        if not pending or remaining <= 0:
            return
        if not await ledger.wait_progress(min(5.0, remaining)):
            # Nothing ended for a while: are the rest parked?
            parked = await _parked_saga_ids(url) & set(planned)


async def _quiesce(url: str, databases: dict[str, str], *, within: float) -> None:
    """Until no message waits in any queue, every outbox is sent and nothing changes."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + within
    queues = _work_and_retry_queues()
    previous: tuple[int, int] | None = None
    while loop.time() < give_up_at:
        queued = await _queued_messages(url, queues)
        state = await read_stores(databases)
        current = (queued + sum(state.pending_outbox.values()), state.inbox_rows)
        if current[0] == 0 and current == previous:
            return
        previous = current
        await asyncio.sleep(1.5)
    logger.warning("the system did not come to rest within %gs", within)


# -- the run -----------------------------------------------------------------------------


async def run_chaos(options: ChaosOptions) -> dict[str, Any]:
    """One chaos run; the report as a dict (see ``_chaos_report.report_dict``)."""
    began = time.monotonic()
    orders_rng = random.Random(f"{options.seed}:orders")
    faults_rng = random.Random(f"{options.seed}:faults")
    runtime_rng = random.Random(f"{options.seed}:runtime")
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"sagakit-chaos-{options.seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logger.info("seed %d, %d sagas, work directory %s", options.seed, options.sagas, workdir)

    plan = plan_faults(faults_rng, sagas=options.sagas, services=PARTICIPANTS)
    crashes = CrashPoints(
        ORDER_SAGA,
        rng=faults_rng,
        directory=workdir,
        budget=max(len(PARTICIPANTS), round(3 * options.sagas / 100)),
    )

    async with private_broker(workdir) as node, databases(options, workdir) as dbs:
        url = node.url
        proxy = TcpProxy("127.0.0.1", node.port)
        await proxy.start()
        ledger = Ledger(url, spec=ORDER_SAGA)
        await ledger.open()  # before any saga starts
        try:
            service_env = {
                name: {
                    f"{name.upper()}_DATABASE_URL": dbs[name],
                    f"{name.upper()}_LOG_LEVEL": options.service_log_level,
                    **crashes.env(name),
                }
                for name in PARTICIPANTS
            }
            service_env["inventory"]["INVENTORY_STOCK"] = json.dumps(INITIAL_STOCK)
            procs = ServiceProcesses(
                {name: (name, f"{name}_service.main:app") for name in PARTICIPANTS},
                spec=ORDER_SAGA,
                url=url,  # readiness is checked straight at the broker ...
                log_dir=workdir,
                env={"RABBITMQ_URL": proxy.rewrite(url)},  # ... the services go through the proxy
                service_env=service_env,
                grace=5.0,
            )
            async with procs, SagaClient(url, ORDER_SAGA, producer="chaos") as client:
                await procs.start(timeout=120)
                injector = Injector(
                    procs=procs,
                    proxy=proxy,
                    client=client,
                    ledger=ledger,
                    spec=ORDER_SAGA,
                    rng=runtime_rng,
                    crashes=crashes,
                    broker=node,
                )
                try:
                    planned, republished = await _inject(
                        options, client, injector, plan, orders_rng
                    )
                    await injector.restore()
                    await _wait_for_end(ledger, planned, url, within=options.settle_timeout)
                    await _quiesce(url, dbs, within=120)
                    consumers = await _consumers(url)
                finally:
                    await injector.stop()
                await procs.stop()
            await ledger.drain()
            async with DeadLetters(url, services=PARTICIPANTS) as dead_letters:
                parked = await dead_letters.parked()
            stores = await read_stores(dbs)
        finally:
            await ledger.close()
            await proxy.close()

    result = audit(
        spec=ORDER_SAGA,
        consumers=consumers,
        planned=planned,
        ledger=ledger,
        parked=parked,
        stores=stores,
        malformed=injector.malformed,
        duplicated=injector.duplicated,
    )
    faults = dict(injector.done)
    faults[FaultKind.BUSINESS_FAILURE.value] = sum(1 for p in planned.values() if p.failed_step)
    result.notes["start events published again"] = republished
    faulted = [entry for entry in injector.timeline if "in_flight" in entry]
    met = sum(1 for entry in faulted if entry["in_flight"] > 0)
    result.notes["faults that met sagas in flight"] = f"{met} of {len(faulted)}"
    result.notes["crash points armed"] = len(crashes.history)
    return report_dict(
        seed=options.seed,
        sagas=options.sagas,
        store=options.store,
        seconds=time.monotonic() - began,
        workdir=str(workdir),
        faults=faults,
        audit=result,
        timeline=injector.timeline,
        unexpected_exits=injector.unexpected_exits,
    )


async def _inject(
    options: ChaosOptions,
    client: SagaClient,
    injector: Injector,
    plan: list[Fault],
    orders_rng: random.Random,
) -> tuple[dict[str, PlannedOrder], int]:
    """Start the sagas at a steady rate while the faults fire; returns them by saga id."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Fault | None] = asyncio.Queue()

    async def carry_out() -> None:
        while (fault := await queue.get()) is not None:
            queue.task_done()  # taken: the publisher may go on
            await injector.apply(fault)

    injector.start()
    worker = asyncio.create_task(carry_out(), name="chaos-faults")
    planned: dict[str, PlannedOrder] = {}
    republished = 0
    pending = list(plan)
    next_at = loop.time()
    try:
        for number in range(1, options.sagas + 1):
            order = plan_order(orders_rng, number)
            envelope = client.new_saga(order.order)
            planned[str(envelope.context.saga_id)] = order
            republished += await until_confirmed(functools.partial(client.publish, envelope))
            injector.started = number
            while pending and pending[0].after_saga <= number:
                queue.put_nowait(pending.pop(0))
            # Sagas keep starting while a fault runs, but never run past the next fault
            # that is due: each fault meets the sagas started just before it, in flight.
            if not queue.empty():
                taken = asyncio.ensure_future(queue.join())
                await asyncio.wait({taken, worker}, return_when=asyncio.FIRST_COMPLETED)
                taken.cancel()
            if worker.done():
                worker.result()  # a fault that could not be carried out ends the run
            injector.raise_if_broken()
            if number % 50 == 0:
                logger.info("%d sagas started, faults so far: %s", number, dict(injector.done))
            next_at = max(next_at + 1 / options.rate, loop.time())
            await asyncio.sleep(next_at - loop.time())
        queue.put_nowait(None)
        await worker
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return planned, republished


# -- command line ------------------------------------------------------------------------


def _options(argv: Sequence[str] | None) -> tuple[ChaosOptions, str | None, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=1000, help="how many sagas (1000)")
    parser.add_argument("--seed", type=int, default=None, help="the seed (random when unset)")
    parser.add_argument("--rate", type=float, default=8.0, help="sagas started per second (8)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SAGAKIT_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="an admin URL; the run creates and drops four databases there",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="logs and SQLite files")
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--service-log-level", default="INFO")
    parser.add_argument("--json", default=None, help="also write the report there ('-': stdout)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    options = ChaosOptions(
        sagas=args.sagas,
        seed=args.seed if args.seed is not None else secrets.randbelow(1_000_000),
        rate=args.rate,
        store=args.store,
        postgres_url=args.postgres_url,
        workdir=args.workdir,
        settle_timeout=args.settle_timeout,
        service_log_level=args.service_log_level,
    )
    return options, args.json, args.quiet


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; the exit code says whether the checks held."""
    options, json_path, quiet = _options(argv)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    print(f"seed {options.seed}", flush=True)
    try:
        report = asyncio.run(run_chaos(options))
    except Exception:
        logger.exception("the chaos run could not be carried out (seed %d)", options.seed)
        return 2
    if json_path == "-":
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
        if json_path:
            Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = report["lost"] or report["applied_twice"] or report["wrong_outcomes"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
