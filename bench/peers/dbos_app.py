"""The order saga on DBOS Transact: a workflow of four transactions, compensated in reverse.

Written as DBOS's own examples write a saga: a ``@DBOS.workflow()`` calls one
``@db.transaction()`` per step (``db`` a ``SQLAlchemyDatasource`` on the application
database, which replaced ``@DBOS.transaction`` in DBOS 3); a step that refuses the order
raises, and the workflow then runs the compensations of the steps before it, newest first,
each a transaction too. DBOS checkpoints every transaction's result in the same database
transaction, and the workflow's progress in its system database.

Run as a process (the environment names the databases, as DBOS's own templates read them)::

    SAGA_PEER_SYSTEM_DB=postgresql://... SAGA_PEER_APP_DB=postgresql+psycopg://... \\
        python -m peers.dbos_app worker --polling-interval 0.05
    python -m peers.dbos_app driver

``worker`` registers the queue and runs what a client enqueues on it until SIGTERM;
``driver`` starts the sagas itself with ``DBOS.start_workflow``, as JSON commands on its
standard input ask (``peers.dbos_peer`` speaks to it), and answers on its standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TextIO

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SQLAlchemyDatasource

from peers import _drive
from peers._saga import (
    DBOS_APP_NAME,
    DBOS_QUEUE,
    DBOS_WORKFLOW,
    FULFILLED,
    METADATA,
    STEP_BY_NAME,
    STEPS,
    TABLES,
    BusinessFailure,
    Order,
    cancelled,
    detail,
    now_ns,
    refusal,
)

SYSTEM_DB = os.environ.get("SAGA_PEER_SYSTEM_DB", "")
APP_DB = os.environ.get("SAGA_PEER_APP_DB", "")


def _config() -> DBOSConfig:
    return {
        "name": DBOS_APP_NAME,
        "system_database_url": SYSTEM_DB,
        # Per-workflow log lines off, as sagakit's per-message lines are in the benchmark.
        "log_level": "WARNING",
    }


# Threads of the in-process driver: one waits on each saga in flight (at most 256), a few
# start them.
WAITING_THREADS = 300

if not (SYSTEM_DB and APP_DB):
    raise SystemExit("SAGA_PEER_SYSTEM_DB and SAGA_PEER_APP_DB name the databases")
DBOS(config=_config())
db = SQLAlchemyDatasource.create(APP_DB)


def _write(step: str, action: str, order: Order) -> None:
    db.sql_session().execute(
        sa.insert(TABLES[step]).values(
            order_id=order["order_id"], action=action, detail=detail(step, order), at_ns=now_ns()
        )
    )


def _do(step: str, order: Order) -> None:
    reason = refusal(step, order)
    if reason is not None:
        raise BusinessFailure(reason)
    _write(step, STEP_BY_NAME[step].action, order)


# One transaction per step and per compensation: the decorator needs a function of its own.


@db.transaction()
def reserve_stock(order: Order) -> None:
    _do("reserve_stock", order)


@db.transaction()
def charge_payment(order: Order) -> None:
    _do("charge_payment", order)


@db.transaction()
def ship_order(order: Order) -> None:
    _do("ship_order", order)


@db.transaction()
def confirm_order(order: Order) -> None:
    _do("confirm_order", order)


@db.transaction()
def release_stock(order: Order) -> None:
    _write("reserve_stock", "release", order)


@db.transaction()
def refund_payment(order: Order) -> None:
    _write("charge_payment", "refund", order)


@db.transaction()
def cancel_shipment(order: Order) -> None:
    _write("ship_order", "cancel", order)


FORWARD: dict[str, Callable[[Order], None]] = {
    "reserve_stock": reserve_stock,
    "charge_payment": charge_payment,
    "ship_order": ship_order,
    "confirm_order": confirm_order,
}
COMPENSATION: dict[str, Callable[[Order], None]] = {
    "reserve_stock": release_stock,
    "charge_payment": refund_payment,
    "ship_order": cancel_shipment,
}


@DBOS.workflow(name=DBOS_WORKFLOW)
def order_saga(order: Order) -> str:
    """Run the four steps; on a refusal, undo the steps done so far, newest first."""
    compensations: list[Callable[[Order], None]] = []
    for step in STEPS:
        try:
            FORWARD[step.name](order)
        except BusinessFailure:
            for compensate in reversed(compensations):
                compensate(order)
            return cancelled(step.name)
        if step.name in COMPENSATION:
            compensations.append(COMPENSATION[step.name])
    return FULFILLED


# -- processes ---------------------------------------------------------------------------------


def _launch() -> None:
    METADATA.create_all(db.engine)
    DBOS.launch()


def worker(polling_interval: float) -> None:
    """Serve the queue until SIGTERM."""
    _launch()
    # A queue's worker polls the system database for new work every polling_interval_sec
    # (DBOS's default: 1 s); the value is the benchmark's choice (``--dbos-polling``).
    DBOS.register_queue(DBOS_QUEUE, polling_interval_sec=polling_interval)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print("ready", flush=True)
    stopped.wait()
    DBOS.destroy()


async def _start(order: Order) -> _drive.Ended:
    # start_workflow writes the workflow's status row and hands the workflow to DBOS's
    # executor; get_result waits for it (a thread each: the loop's executor is sized for it).
    handle = await asyncio.to_thread(DBOS.start_workflow, order_saga, order)
    return _drive.Ended(await asyncio.to_thread(handle.get_result))


async def _serve_commands(out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WAITING_THREADS))
    out.write("ready\n")
    out.flush()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command: dict[str, Any] = json.loads(line)
        orders = [(order, expected) for order, expected in command["orders"]]
        if command["op"] == "full":
            result, outcomes = await _drive.full_speed(
                _start, orders, in_flight=command["in_flight"], phase=command["phase"]
            )
        else:
            result, outcomes = await _drive.offered_rate(
                _start, orders, rate=command["rate"], phase=command["phase"]
            )
        out.write(json.dumps({"result": asdict(result), "outcomes": outcomes}) + "\n")
        out.flush()


def driver() -> None:
    """Start sagas in this process, as the commands on standard input say."""
    # Standard output carries the answers only: anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _launch()
    try:
        asyncio.run(_serve_commands(out))
    finally:
        DBOS.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    serve = modes.add_parser("worker")
    serve.add_argument("--polling-interval", type=float, default=1.0)
    modes.add_parser("driver")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args.polling_interval)
    else:
        driver()


if __name__ == "__main__":
    main()
