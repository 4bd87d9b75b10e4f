"""Bounded stores: a background task that deletes what retention no longer keeps.

Every participant prunes its own store (``Store.prune``: inbox records and sent outbox rows
past ``<PREFIX>RETENTION_DAYS``, the step log only past ``<PREFIX>STEP_LOG_RETENTION_DAYS``
when that is set), and the tracker its own (``TrackerStore.prune``: ended sagas). A pass
runs shortly after start and then every ``<PREFIX>PRUNE_INTERVAL_SECONDS``, deletes in
small batches with a pause between them, then counts the rows left; the counts, the rows
deleted and the time of the last pass are Prometheus metrics, so nothing on the hot path
counts rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from sagakit.observability._metrics import STORE_LAST_PRUNE, STORE_PRUNED, STORE_ROWS
from sagakit.runtime._settings import MIN_SAFE_RETENTION_DAYS, ParticipantSettings
from sagakit.store._store import Store

if TYPE_CHECKING:
    from sagakit.tracker._store import TrackerStore

logger = logging.getLogger("sagakit.retention")

# The first pass waits this long after start (or one interval, if shorter): a service that
# starts after an outage first drains its backlog.
_FIRST_PASS_AFTER_SECONDS = 60.0
# Between two batches of one pass: handlers waiting for the store go first.
BATCH_PAUSE_SECONDS = 0.005

Counts = dict[str, int]


class Pruner:
    """Prunes one store now and then, off the hot path, and reports it as metrics.

    Args:
        service: The service's name, the ``service`` label of the metrics.
        prune: One pass: deletes what retention no longer keeps; rows deleted by table.
        count: The rows left, by table.
        interval: Seconds between passes.
        first_after: Seconds before the first pass (default: a minute, or ``interval``
            if shorter).
        notice: A warning to log when the task starts (a retention below the safe minimum).
    """

    def __init__(
        self,
        service: str,
        *,
        prune: Callable[[], Awaitable[Counts]],
        count: Callable[[], Awaitable[Counts]],
        interval: float,
        first_after: float | None = None,
        notice: str | None = None,
    ) -> None:
        self.service = service
        self._prune = prune
        self._count = count
        self._interval = interval
        self._first_after = (
            min(interval, _FIRST_PASS_AFTER_SECONDS) if first_after is None else first_after
        )
        self._notice = notice
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start pruning in the background."""
        if self._notice:
            logger.warning(self._notice)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.service}-prune")

    async def stop(self) -> None:
        """Stop the background task (a pass under way ends with its current batch)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> Counts:
        """One pass now: prune, count, update the metrics; returns rows deleted by table."""
        async with self._lock:  # the background task and a caller never prune at once
            began = time.monotonic()
            deleted = await self._prune()
            for table, rows in deleted.items():
                STORE_PRUNED.labels(self.service, table).inc(rows)
            for table, rows in (await self._count()).items():
                STORE_ROWS.labels(self.service, table).set(rows)
            STORE_LAST_PRUNE.labels(self.service).set(time.time())
        if any(deleted.values()):
            summary = ", ".join(f"{rows} from {table}" for table, rows in deleted.items() if rows)
            logger.info("pruned %s in %.2fs", summary, time.monotonic() - began)
        return deleted

    async def _run(self) -> None:
        await asyncio.sleep(self._first_after)
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store is away, or busy for longer than its timeout: the next pass
                # deletes what this one left, and the last-prune metric shows the gap.
                logger.exception("pruning the store failed; trying again in %gs", self._interval)
            await asyncio.sleep(self._interval)


def retention_notice(settings: ParticipantSettings) -> str | None:
    """A warning when ``settings`` keep inbox records for less than the safe minimum."""
    if settings.retention_days >= MIN_SAFE_RETENTION_DAYS:
        return None
    return (
        f"the retention is {settings.retention_days:g} day(s), below the safe minimum of "
        f"{MIN_SAFE_RETENTION_DAYS:g}: a message redelivered or replayed after its inbox "
        "record is deleted is handled again (accepted in local development only)"
    )


def participant_pruner(store: Store, settings: ParticipantSettings, *, service: str) -> Pruner:
    """The prune task of a participant's store, from its settings."""
    prune = functools.partial(
        store.prune,
        older_than=settings.retention,
        step_log_older_than=settings.step_log_retention,
        pause=BATCH_PAUSE_SECONDS,
    )
    return Pruner(
        service,
        prune=prune,
        count=store.count_rows,
        interval=settings.prune_interval_seconds,
        notice=retention_notice(settings),
    )


def tracker_pruner(store: TrackerStore, settings: ParticipantSettings) -> Pruner:
    """The prune task of the tracker's store: ended sagas past ``TRACKER_RETENTION_DAYS``."""
    prune = functools.partial(store.prune, older_than=settings.retention, pause=BATCH_PAUSE_SECONDS)
    return Pruner(
        "tracker",
        prune=prune,
        count=store.count_rows,
        interval=settings.prune_interval_seconds,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSize:
    """How big a store is on disk.

    Attributes:
        file_bytes: SQLite: the database file (after a passive checkpoint of the WAL);
            PostgreSQL: the tables named, with their indexes and TOAST.
        used_bytes: SQLite: the pages that hold data (the file less its free pages, which
            new rows reuse); None on PostgreSQL.
    """

    file_bytes: int
    used_bytes: int | None

    def as_dict(self) -> dict[str, int | None]:
        """The sizes as a JSON-ready dict."""
        return {"file_bytes": self.file_bytes, "used_bytes": self.used_bytes}


async def store_size(store: Store, tables: Sequence[str]) -> StoreSize:
    """The size of ``store``: the whole file on SQLite, ``tables`` on PostgreSQL."""
    async with store.engine.connect() as connection:
        if store.is_sqlite:
            # The file grows when the WAL is written back: measure after that.
            await _checkpoint_whole_wal(connection)
            pages = await _pragma(connection, "page_count")
            free = await _pragma(connection, "freelist_count")
            page_size = await _pragma(connection, "page_size")
            file_bytes = _file_bytes(make_url(store.url).database or "")
            return StoreSize(file_bytes=file_bytes, used_bytes=(pages - free) * page_size)
        total = 0
        for table in tables:
            result = await connection.execute(
                text("SELECT coalesce(pg_total_relation_size(to_regclass(:t)), 0)"), {"t": table}
            )
            total += int(result.scalar_one())
        return StoreSize(file_bytes=total, used_bytes=None)


async def vacuum(store: Store, tables: Sequence[str]) -> None:
    """Give free space back: SQLite rewrites the file to the pages in use (it waits for,
    then holds, the database's write lock meanwhile); PostgreSQL vacuums ``tables``, which
    makes their dead rows' space reusable but rarely shrinks the files."""
    async with store.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        if store.is_sqlite:
            await autocommit.exec_driver_sql("VACUUM")
            await autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        for table in tables:
            await autocommit.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')


def _file_bytes(path: str) -> int:
    # One stat of a local file: not worth a thread.
    return os.path.getsize(path) if os.path.isfile(path) else 0


async def _checkpoint_whole_wal(connection: AsyncConnection, *, within: float = 5.0) -> None:
    """A passive checkpoint, again until it wrote back the whole WAL or ``within`` seconds
    passed: one that meets the store's own background checkpoint returns busy at once,
    having written nothing back."""
    deadline = time.monotonic() + within
    while True:
        row = (await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one()
        busy, log, written = (int(value) for value in row)
        if (not busy and written >= log) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def _pragma(connection: AsyncConnection, name: str) -> int:
    return int((await connection.exec_driver_sql(f"PRAGMA {name}")).scalar_one())
