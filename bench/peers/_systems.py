"""What the benchmark runs, system by system: bring it up, check it, time it, take it down.

Every system of ``saga_bench.py --peers`` (sagakit's, the null saga, the peers) is a
``System``: ``up()`` starts its processes and yields a ``Running`` that runs sagas and
names the processes whose CPU counts. The peers share ``PeerRunning``: their sagas are
driven by ``_drive`` and checked by ``_saga.check_rows`` before anything is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from _load import PhaseResult
from _procstat import die_with_parent, postgres_pid, process_tree
from order_contracts.samples import Scenario

from peers import _drive
from peers._saga import FULFILLED, Order, Row, check_rows, expected_outcome, make_order

BENCH_DIR = Path(__file__).resolve().parent.parent
Groups = dict[str, list[int] | Callable[[], list[int]]]
# Sagas of each outcome run and checked before a peer is timed.
CHECK_EACH = 2
READY_TIMEOUT = 120.0


@dataclass
class Fairness:
    """What a system's durable writes wait for, and what it does per fulfilled saga."""

    durability: str
    per_saga: str


@dataclass
class Facts:
    """What a system counted while it was up (beyond the phases' figures)."""

    sagas: int = 0
    # Committed and rolled-back transactions in the run's PostgreSQL databases.
    postgres_transactions: int | None = None
    notes: list[str] = field(default_factory=list)


class Running(Protocol):
    """A system that is up."""

    facts: Facts

    def groups(self) -> Groups:
        """The processes whose CPU time counts, by name (a function: listed at each look)."""
        ...

    async def check(self) -> dict[str, int]:
        """Run a few sagas of each outcome and check what they did; the count per outcome."""
        ...

    async def full_speed(self, count: int, *, in_flight: int, phase: str) -> PhaseResult:
        """``count`` fulfilled sagas, at most ``in_flight`` unfinished at a time."""
        ...

    async def at_rate(self, count: int, *, rate: float) -> PhaseResult:
        """``count`` fulfilled sagas started at ``rate`` per second, whatever is in flight."""
        ...


class System(Protocol):
    """One row of the table."""

    name: str
    fairness: Fairness

    def up(self) -> AbstractAsyncContextManager[Running]:
        """Start the system; stop it (and drop what it stored) on exit."""
        ...


# -- peers ---------------------------------------------------------------------------------------


def fulfilled_orders(count: int) -> list[tuple[Order, str]]:
    """``count`` orders that end fulfilled, each with its expected outcome."""
    return [(make_order(Scenario.FULFILLED), FULFILLED) for _ in range(count)]


class PeerRunning:
    """A peer that is up: what it runs per saga (``start``) and where its rows are (``rows``)."""

    # The clock ``start``'s end times are on (a peer that learns ends from its store's time
    # stamps uses the wall clock).
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.facts = Facts()

    def groups(self) -> Groups:
        raise NotImplementedError

    async def start(self, order: Order) -> _drive.Ended:
        """Start one saga; return once the driver knows how it ended."""
        raise NotImplementedError

    async def rows(self) -> list[Row]:
        """Every row the saga's steps and compensations wrote."""
        raise NotImplementedError

    async def run_full(
        self, orders: Sequence[tuple[Order, str]], *, in_flight: int, phase: str
    ) -> tuple[PhaseResult, dict[str, str]]:
        return await _drive.full_speed(
            self.start, orders, in_flight=in_flight, clock=self.clock, phase=phase
        )

    async def run_at_rate(
        self, orders: Sequence[tuple[Order, str]], *, rate: float
    ) -> tuple[PhaseResult, dict[str, str]]:
        return await _drive.offered_rate(self.start, orders, rate=rate, clock=self.clock)

    async def check(self) -> dict[str, int]:
        scenarios = [scenario for scenario in Scenario for _ in range(CHECK_EACH)]
        orders = [(make_order(s), expected_outcome(s)) for s in scenarios]
        _, outcomes = await self.run_full(orders, in_flight=len(orders), phase="check")
        self.facts.sagas += len(orders)
        by_id = {order["order_id"]: s for (order, _), s in zip(orders, scenarios, strict=True)}
        return check_rows(by_id, outcomes, await self.rows())

    async def full_speed(self, count: int, *, in_flight: int, phase: str) -> PhaseResult:
        result, _ = await self.run_full(fulfilled_orders(count), in_flight=in_flight, phase=phase)
        self.facts.sagas += count
        return result

    async def at_rate(self, count: int, *, rate: float) -> PhaseResult:
        result, _ = await self.run_at_rate(fulfilled_orders(count), rate=rate)
        self.facts.sagas += count
        return result


# -- processes -----------------------------------------------------------------------------------


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a peer's process: ``bench/`` on the path, for ``peers.*``."""
    path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


@contextlib.contextmanager
def spawned(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    stdin: bool = False,
) -> Iterator[subprocess.Popen[str]]:
    """A process with its stdout on a pipe (its ``ready`` line, its answers) and stderr in ``log``.

    Stopped with SIGTERM on exit (SIGKILL after 15 s).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as errors:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        yield process
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def log_tail(log: Path) -> str:
    """The end of a process's log, for an error message."""
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def read_line(process: subprocess.Popen[str], *, timeout: float, log: Path) -> str:  # noqa: ASYNC109
    """The next line ``process`` writes on its stdout; fails with its log's tail if none comes."""
    stream: IO[str] | None = process.stdout
    assert stream is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(stream.readline), timeout)
    except TimeoutError:
        line = ""
    if not line:
        raise RuntimeError(f"{process.args!r} said nothing (log {log}):\n{log_tail(log)}")
    return line


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args``, with this interpreter."""
    return [sys.executable, "-m", module, *args]


# -- PostgreSQL ----------------------------------------------------------------------------------


def _title(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    except OSError:
        return []


def postgres_processes(databases: Collection[str]) -> Callable[[], list[int]]:
    """The local server's processes that work for ``databases``.

    Their backends (a backend's process title names its database), and the server's own
    background processes (WAL writer, checkpointer...), which serve every database: the
    other backends of a shared server (other benchmarks, tests) are left out.
    """
    server = postgres_pid()

    def pids() -> list[int]:
        if server is None:
            return []
        found = []
        for pid in process_tree(server):
            title = _title(pid)
            if any(word in databases for word in title):
                found.append(pid)
            elif not any("(" in word or word == "[local]" for word in title):
                found.append(pid)  # the postmaster and its background processes
        return found

    return pids


async def postgres_transactions(admin_url: str, databases: Collection[str]) -> int:
    """Transactions committed and rolled back in ``databases`` so far (the server's statistics).

    Read once the system's processes have exited: a backend reports its counts when it
    goes idle (at most once a second) and when it ends.
    """
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await asyncio.sleep(0.5)
        value = await connection.fetchval(
            "SELECT coalesce(sum(xact_commit + xact_rollback), 0) FROM pg_stat_database "
            "WHERE datname = ANY($1::text[])",
            list(databases),
        )
        return int(value)
    finally:
        await connection.close()


def database_name(url: str) -> str:
    """The database a URL names."""
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def with_driver(url: str, driver: str) -> str:
    """``url`` with SQLAlchemy driver ``driver`` (``postgresql`` for none)."""
    scheme, rest = url.split("://", 1)
    return f"{driver}://{rest}" if scheme.startswith("postgresql") else url


@contextlib.asynccontextmanager
async def counted_databases(
    admin_url: str, names: Sequence[str], facts: Facts
) -> AsyncIterator[dict[str, str]]:
    """``_infra.throwaway_databases``, counting their transactions into ``facts`` at the end.

    The count is taken after the body (which stops the system's processes) and before the
    databases are dropped.
    """
    from _infra import throwaway_databases

    async with throwaway_databases(admin_url, names) as urls:
        try:
            yield urls
        finally:
            with contextlib.suppress(Exception):
                facts.postgres_transactions = await postgres_transactions(
                    admin_url, [database_name(url) for url in urls.values()]
                )
