"""Chaos run: thousands of sagas under faults, and proof that nothing was lost or done twice.

    uv run python -m sagakit_chaos --sagas 1000 --seed 42 [--store postgresql] [--json out.json]

Starts a RabbitMQ node of its own (sagakit_lab: free ports, data in the work directory; it
needs ``rabbitmq-server`` installed, and never touches a broker it did not start), the four
participants as processes on it (their broker URL points at a local TCP proxy), declares an
independent ledger queue bound ``#`` to the flow's exchange, then starts sagas at a steady
rate over a seeded order mix (every business failure of the reference rules) while a
seeded plan kills services with SIGKILL, arms crash points, restarts the broker (the run's
own node, stopped and started again),
cuts and slows the services' connections, publishes copies of events seen on the exchange
and publishes garbage under real routing keys. It also takes the stores away: each
participant's database lives where a fault can reach it (SQLite on a small volume of its own
that fills up or turns read-only for a while; PostgreSQL in a private cluster of its own,
stopped with ``-m immediate`` for a while), and sends hostile input: a start event with a
full header table and an invalid saga id (and a valid one with as many headers), a start
event just under the size limit padded in its context, conflicting duplicates (an event id
again with another body) and failures or compensations for sagas nobody started. Then it
waits for every saga to end, and checks each service's own store, the dead-letter queues
and the ledger against each other.

Exits 1 when a saga was stranded or wrongly cancelled, or anything was lost, applied twice
or ended against the rules; 2 on a run that could not be carried out. The seed and the
table go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from order_contracts import ORDER_SAGA
from sagakit.client import DeadLetters, SagaClient
from sagakit.testing import ServiceProcesses
from sagakit_lab import ClusterError, RabbitNode, TcpProxy, VolumeError

from ._audit import audit
from ._crashes import CrashPoints
from ._faults import STORE_FAULTS, Fault, FaultKind, Injector, plan_faults, until_confirmed
from ._hostile import InputFaults
from ._ledger import Ledger
from ._orders import INITIAL_STOCK, PlannedOrder, plan_order
from ._report import print_report, report_dict
from ._settle import consumers as settled_consumers
from ._settle import quiesce, wait_for_end
from ._store_faults import StoreFaultHands, StoreFaults, placements
from ._stores import read_stores

__all__ = ["ChaosOptions", "main", "run_chaos"]

logger = logging.getLogger("chaos")

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """How a run goes; ``seed`` fixes the orders, the fault plan and the choices made."""

    sagas: int = 1000
    seed: int = 0
    rate: float = 8.0
    store: str = "sqlite"
    postgres_url: str | None = None  # None: a private cluster per participant
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
async def placed_stores(
    options: ChaosOptions, workdir: Path
) -> AsyncIterator[tuple[StoreFaults, dict[str, str]]]:
    """Each participant's database where store faults reach it; and, for each store fault
    kind that cannot be carried out in this run, why."""
    unavailable: dict[str, str] = {}
    layout = placements(options.store, PARTICIPANTS)
    if options.store == "postgresql" and options.postgres_url is not None:
        layout = dict.fromkeys(PARTICIPANTS, "shared")
    stores = StoreFaults(layout, workdir=workdir, postgres_url=options.postgres_url, volume_mb=64)
    try:
        await stores.__aenter__()
    except (VolumeError, ClusterError) as exc:
        # Not root, or no loop device or PostgreSQL binaries: run without store faults.
        if options.store != "sqlite":
            raise
        logger.warning("store faults cannot be carried out here: %s", exc)
        unavailable["disk_full"] = unavailable["read_only_store"] = str(exc)
        stores = StoreFaults(dict.fromkeys(PARTICIPANTS, "sqlite"), workdir=workdir)
        await stores.__aenter__()
    for kind, name in STORE_FAULTS.items():
        if not stores.targets(name):
            unavailable.setdefault(kind.value, f"the {options.store} stores are not placed for it")
    try:
        yield stores, unavailable
    finally:
        await stores.close()


# -- the run -----------------------------------------------------------------------------


async def run_chaos(options: ChaosOptions) -> dict[str, Any]:
    """One chaos run; the report as a dict (see ``report_dict``)."""
    began = time.monotonic()
    orders_rng = random.Random(f"{options.seed}:orders")
    faults_rng = random.Random(f"{options.seed}:faults")
    runtime_rng = random.Random(f"{options.seed}:runtime")
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"sagakit-chaos-{options.seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logger.info("seed %d, %d sagas, work directory %s", options.seed, options.sagas, workdir)

    crashes = CrashPoints(
        ORDER_SAGA,
        rng=faults_rng,
        directory=workdir,
        budget=max(len(PARTICIPANTS), round(3 * options.sagas / 100)),
    )

    async with private_broker(workdir) as node, placed_stores(options, workdir) as placed:
        url = node.url
        store_faults, unavailable = placed
        dbs = store_faults.databases
        kinds = [kind for kind in FaultKind if kind.value not in unavailable]
        targets = {kind: store_faults.targets(n) for kind, n in STORE_FAULTS.items()}
        plan = plan_faults(
            faults_rng,
            sagas=options.sagas,
            services=PARTICIPANTS,
            kinds=kinds,
            targets=targets,
            more_rng=random.Random(f"{options.seed}:more-faults"),
        )
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
                {name: (name, f"{name}_service.main:create_app") for name in PARTICIPANTS},
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
                inputs = InputFaults(
                    injector,
                    client=client,
                    ledger=ledger,
                    spec=ORDER_SAGA,
                    rng=random.Random(f"{options.seed}:inputs"),
                )
                injector.handlers.update(inputs.handlers())
                store_hands = StoreFaultHands(store_faults, injector)
                injector.handlers.update(store_hands.handlers())
                try:
                    planned, republished = await _inject(
                        options, client, injector, plan, orders_rng
                    )
                    planned.update(inputs.planned)
                    await store_hands.wait()
                    await injector.restore()
                    await store_faults.restore()
                    await wait_for_end(
                        ledger,
                        planned,
                        url,
                        participants=PARTICIPANTS,
                        within=options.settle_timeout,
                    )
                    await quiesce(url, dbs, spec=ORDER_SAGA, participants=PARTICIPANTS, within=120)
                    consumers = await settled_consumers(url, ORDER_SAGA, PARTICIPANTS)
                finally:
                    await store_hands.stop()
                    await injector.stop()
                    await store_faults.restore()
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
    result.notes["valid sagas started beside hostile input"] = len(inputs.planned)
    report = report_dict(
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
    report["unavailable_kinds"] = unavailable
    return report


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
    parser = argparse.ArgumentParser(
        prog="python -m sagakit_chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sagas", type=int, default=1000, help="how many sagas (1000)")
    parser.add_argument("--seed", type=int, default=None, help="the seed (random when unset)")
    parser.add_argument("--rate", type=float, default=8.0, help="sagas started per second (8)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="with --store postgresql: an admin URL where the run creates and drops four"
        " databases, instead of a private cluster per participant (no store outages then)",
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
    failed = any(
        report[verdict]
        for verdict in ("stranded", "wrongly_cancelled", "lost", "applied_twice", "wrong_outcomes")
    )
    return 1 if failed else 0
