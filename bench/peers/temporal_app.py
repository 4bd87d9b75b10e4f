"""The order saga on Temporal: the activities and the worker (the workflow: ``temporal_workflow``).

Each activity is one durable write: an ``INSERT`` into the step's own
SQLite file (WAL, ``synchronous=NORMAL``: sagakit's SQLite settings), keyed by order and
action so that a retried activity (Temporal runs activities at least once) adds no row.

Run the worker as a process (one per benchmark run)::

    python -m peers.temporal_app --address 127.0.0.1:7233 --store DIR

It prints ``ready`` once it polls its task queue, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from peers._saga import STEP_BY_NAME, STEPS, Order, detail, now_ns, refusal, sqlite_ddl
from peers.temporal_workflow import BUSINESS_FAILURE, TASK_QUEUE, UNDO_ACTIVITY, OrderSaga


class Store:
    """One SQLite file per step's table, as each of sagakit's services has its own."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.connections: dict[str, sqlite3.Connection] = {}
        for step, ddl in zip(STEPS, sqlite_ddl(), strict=True):
            connection = sqlite3.connect(directory / f"{step.table}.db", isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(ddl.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
            self.connections[step.name] = connection

    def write(self, step: str, action: str, order: Order) -> None:
        # One statement in autocommit mode: one transaction, committed before returning.
        self.connections[step].execute(
            f"INSERT OR IGNORE INTO {STEP_BY_NAME[step].table} "
            "(order_id, action, detail, at_ns) VALUES (?, ?, ?, ?)",
            (order["order_id"], action, detail(step, order), now_ns()),
        )

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


def activities(store: Store) -> list[Callable[..., Any]]:
    """The saga's activities, writing to ``store``."""

    def forward(step: str) -> Callable[..., Any]:
        action = STEP_BY_NAME[step].action

        @activity.defn(name=step)
        async def run(order: Order) -> None:
            reason = refusal(step, order)
            if reason is not None:
                raise ApplicationError(reason, type=BUSINESS_FAILURE, non_retryable=True)
            store.write(step, action, order)

        return run

    def backward(step: str) -> Callable[..., Any]:
        undo = STEP_BY_NAME[step].undo
        assert undo is not None

        @activity.defn(name=UNDO_ACTIVITY[step])
        async def run(order: Order) -> None:
            store.write(step, undo, order)

        return run

    return [forward(step.name) for step in STEPS] + [backward(step) for step in UNDO_ACTIVITY]


async def serve(address: str, store_dir: Path) -> None:
    """Run the worker until SIGTERM."""
    store = Store(store_dir)
    client = await Client.connect(address)
    worker = Worker(
        client, task_queue=TASK_QUEUE, workflows=[OrderSaga], activities=activities(store)
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    running = asyncio.create_task(worker.run())
    print("ready", flush=True)
    await stopped.wait()
    await worker.shutdown()
    await running
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.store))


if __name__ == "__main__":
    main()
