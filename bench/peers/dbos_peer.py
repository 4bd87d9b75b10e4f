"""DBOS Transact in the benchmark: its queue (a client enqueues) and ``start_workflow``.

Each run gets two fresh databases on the local PostgreSQL (DBOS's system database and the
application's), dropped after. ``peers.dbos_app`` is the application.

- **queue**: the app runs as a worker serving a DBOS queue; the benchmark's driver enqueues
  each saga with ``DBOSClient.enqueue_async`` from its own process, as a client would. It
  learns the ends by listing the finished workflows among those in flight
  (``DBOSClient.list_workflows_async``, every ``RESULT_POLL`` seconds, one query for all);
  a saga's end is the time its workflow completed (``completed_at``, on the wall clock,
  as its start), so that this polling adds nothing to the latency.
- **start_workflow**: the driver runs inside the app (``dbos_app driver``) and starts each
  saga with ``DBOS.start_workflow``, its end the moment the handle's result is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from _load import PhaseResult
from _procstat import process_tree

from peers import _drive
from peers._saga import (
    DBOS_APP_NAME,
    DBOS_QUEUE,
    DBOS_WORKFLOW,
    STEPS,
    Order,
    Row,
)
from peers._systems import (
    READY_TIMEOUT,
    Facts,
    Fairness,
    Groups,
    PeerRunning,
    Running,
    counted_databases,
    database_name,
    postgres_processes,
    python_command,
    python_env,
    read_line,
    spawned,
    with_driver,
)

RESULT_POLL = 0.05
# DBOS's default queue polling interval is 1 s; see the README's peers section.
DEFAULT_QUEUE_POLLING = 0.05


def _per_saga(started_by: str) -> str:
    return (
        f"{started_by}; one workflow; per step one transaction on the application database "
        "(the step's row and DBOS's checkpoint of its result) and DBOS's step records in its "
        "system database; the workflow's status written when it starts and ends"
    )


async def _read_rows(app_url: str) -> list[Row]:
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(with_driver(app_url, "postgresql"), timeout=10)
    try:
        rows = []
        for step in STEPS:
            for order_id, action, at_ns in await connection.fetch(
                f"SELECT order_id, action, at_ns FROM {step.table}"
            ):
                rows.append(Row(step.table, order_id, action, at_ns))
        return rows
    finally:
        await connection.close()


class _App:
    """Where one run of the app keeps its data."""

    def __init__(self, urls: dict[str, str], log: Path) -> None:
        self.system_url = with_driver(urls["dbos_system"], "postgresql")
        self.app_url = with_driver(urls["dbos_app"], "postgresql+psycopg")
        self.databases = [database_name(url) for url in urls.values()]
        self.log = log

    def env(self) -> dict[str, str]:
        return python_env(SAGA_PEER_SYSTEM_DB=self.system_url, SAGA_PEER_APP_DB=self.app_url)


class _Finished:
    """Polls DBOS for the workflows in flight that finished: one query for all of them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.waiting: dict[str, asyncio.Future[_drive.Ended]] = {}
        self._task: asyncio.Task[None] | None = None

    def wait(self, workflow_id: str) -> asyncio.Future[_drive.Ended]:
        future: asyncio.Future[_drive.Ended] = asyncio.get_running_loop().create_future()
        self.waiting[workflow_id] = future
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        return future

    async def _poll(self) -> None:
        while self.waiting:
            await asyncio.sleep(RESULT_POLL)
            try:
                finished = await self.client.list_workflows_async(
                    workflow_ids=list(self.waiting),
                    status=["SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"],
                    load_input=False,
                )
            except Exception as error:
                for future in self.waiting.values():
                    future.set_exception(error)
                self.waiting.clear()
                return
            for status in finished:
                if status.workflow_id not in self.waiting:
                    continue
                future = self.waiting.pop(status.workflow_id)
                outcome = status.output if status.status == "SUCCESS" else status.status
                at = (status.completed_at or status.updated_at) / 1000
                future.set_result(_drive.Ended(str(outcome), at))


class _QueueRunning(PeerRunning):
    clock = staticmethod(time.time)

    def __init__(self, app: _App, worker: int, client: Any, facts: Facts) -> None:
        super().__init__()
        self.facts = facts
        self.app = app
        self.worker = worker
        self.client = client
        self.finished = _Finished(client)

    def groups(self) -> Groups:
        return {
            "dbos worker": process_tree(self.worker),
            "driver": [os.getpid()],
            "postgresql": postgres_processes(self.app.databases),
        }

    async def start(self, order: Order) -> _drive.Ended:
        handle = await self.client.enqueue_async(
            {"queue_name": DBOS_QUEUE, "workflow_name": DBOS_WORKFLOW}, order
        )
        return await self.finished.wait(handle.get_workflow_id())

    async def rows(self) -> list[Row]:
        return await _read_rows(self.app.app_url)


class DbosQueue:
    """DBOS: sagas enqueued by a client process, run by the app's queue worker."""

    def __init__(self, *, admin_url: str, log_dir: Path, polling: float) -> None:
        self.name = "DBOS 3.4, queue (driver enqueues from its own process)"
        self.admin_url = admin_url
        self.log_dir = log_dir
        self.polling = polling
        self.fairness = Fairness(
            durability="PostgreSQL as configured (below); DBOS's default SERIALIZABLE "
            "transactions for the steps",
            per_saga=_per_saga(
                f"enqueue (one insert into the system database); the worker's queue polls "
                f"every {polling:g} s (`polling_interval_sec`, default 1 s) and claims what "
                "is enqueued"
            ),
        )

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[Running]:
        from dbos import DBOSClient

        facts = Facts()
        async with counted_databases(self.admin_url, ["dbos_system", "dbos_app"], facts) as urls:
            app = _App(urls, self.log_dir / "dbos-queue.log")
            command = python_command(
                "peers.dbos_app", "worker", "--polling-interval", str(self.polling)
            )
            with spawned(command, log=app.log, env=app.env()) as worker:
                await read_line(worker, timeout=READY_TIMEOUT, log=app.log)
                client = await asyncio.to_thread(
                    DBOSClient, system_database_url=app.system_url, application_name=DBOS_APP_NAME
                )
                try:
                    yield _QueueRunning(app, worker.pid, client, facts)
                finally:
                    await asyncio.to_thread(client.destroy)


class _InProcessRunning(PeerRunning):
    """The driver is inside the app: each phase is a command to it, its figures the answer."""

    def __init__(self, app: _App, process: Any, facts: Facts) -> None:
        super().__init__()
        self.facts = facts
        self.app = app
        self.process = process

    def groups(self) -> Groups:
        return {
            "dbos app (driver inside)": process_tree(self.process.pid),
            "postgresql": postgres_processes(self.app.databases),
        }

    async def _ask(self, command: dict[str, Any]) -> tuple[PhaseResult, dict[str, str]]:
        assert self.process.stdin is not None
        line = json.dumps(command) + "\n"
        await asyncio.to_thread(self.process.stdin.write, line)
        await asyncio.to_thread(self.process.stdin.flush)
        answer = json.loads(await read_line(self.process, timeout=900, log=self.app.log))
        return PhaseResult(**answer["result"]), answer["outcomes"]

    async def run_full(
        self, orders: Sequence[tuple[Order, str]], *, in_flight: int, phase: str
    ) -> tuple[PhaseResult, dict[str, str]]:
        return await self._ask(
            {"op": "full", "orders": orders, "in_flight": in_flight, "phase": phase}
        )

    async def run_at_rate(
        self, orders: Sequence[tuple[Order, str]], *, rate: float
    ) -> tuple[PhaseResult, dict[str, str]]:
        return await self._ask(
            {"op": "rate", "orders": orders, "rate": rate, "phase": "offered rate"}
        )

    async def rows(self) -> list[Row]:
        return await _read_rows(self.app.app_url)


class DbosStartWorkflow:
    """DBOS: sagas started with ``DBOS.start_workflow`` by a driver inside the app."""

    def __init__(self, *, admin_url: str, log_dir: Path) -> None:
        self.name = "DBOS 3.4, `start_workflow` (driver inside the app)"
        self.admin_url = admin_url
        self.log_dir = log_dir
        self.fairness = Fairness(
            durability="PostgreSQL as configured (below); DBOS's default SERIALIZABLE "
            "transactions for the steps",
            per_saga=_per_saga("`DBOS.start_workflow` (one insert into the system database)"),
        )

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[Running]:
        facts = Facts()
        async with counted_databases(self.admin_url, ["dbos_system", "dbos_app"], facts) as urls:
            app = _App(urls, self.log_dir / "dbos-start-workflow.log")
            command = python_command("peers.dbos_app", "driver")
            with spawned(command, log=app.log, env=app.env(), stdin=True) as process:
                await read_line(process, timeout=READY_TIMEOUT, log=app.log)
                yield _InProcessRunning(app, process, facts)


def systems(
    *, admin_url: str, log_dir: Path, polling: float
) -> list[DbosQueue | DbosStartWorkflow]:
    """Both ways of running DBOS."""
    return [
        DbosQueue(admin_url=admin_url, log_dir=log_dir, polling=polling),
        DbosStartWorkflow(admin_url=admin_url, log_dir=log_dir),
    ]
