"""The recorder on SQLite: ``sqlite3`` itself, on the event loop's thread.

A local SQLite statement in WAL mode with ``synchronous=NORMAL`` takes microseconds and
commits without an fsync: handing it to a worker thread and back (as aiosqlite does) costs
more than the statement, so the recorder runs statements inline. A statement that must wait
for another process's lock blocks the loop for up to the busy timeout; the store serialises
its own writers with one asyncio lock, and one process owns a file.

Two connections: the writer, used under the lock for every write transaction, and a reader
for the relay's queries, which must never see a transaction that has not committed.

The one write that does wait for the disk is the WAL checkpoint (copying the log into the
database file, with fsyncs), which SQLite runs by default inside the commit that crosses
1000 pages: on a busy disk that commit blocked the loop, and every delivery of the process,
for tens of milliseconds. The writer does no checkpoint; a third connection runs a passive
one in a worker thread at most once a second after a commit (sqlite3 lets go of the GIL
while it does), which waits for no lock, blocks no writer, and lets the next writer restart
the log once it has been copied, so the log stays as small as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sagakit.store._prepared import Prepared, Rows
from sagakit.store._recorder import (
    AGE_COLUMN,
    INBOX,
    OUTBOX,
    OUTBOX_COLUMNS,
    STEPS,
    OutboxRow,
    Recorder,
    Remembered,
    StepStatus,
    Transaction,
    outbox_row,
    outbox_values,
    requeued_in_order,
)

BACKEND = "sqlite"
# The writer's commits start a checkpoint (in a worker thread) at most this often.
CHECKPOINT_EVERY_SECONDS = 1.0

logger = logging.getLogger("sagakit.store")


def sqlite_time(value: datetime) -> str:
    """A time as SQLAlchemy's SQLite dialect stores it (UTC, no offset): the store's files
    are read by both, and retention compares these strings."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"


def connect(path: str, *, busy_seconds: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions begin explicitly), WAL, NORMAL sync."""
    connection = sqlite3.connect(
        path,
        timeout=busy_seconds,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
    )
    # WAL + NORMAL survives a killed process (not a power cut) without fsync per commit.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
    return connection


class SQLiteTransaction(Transaction):
    """A write transaction on the writer connection."""

    backend = BACKEND
    __slots__ = ("connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def _run(self, prepared: Prepared, values: Mapping[str, Any]) -> Rows:
        plan = prepared.plan(BACKEND, tuple(values))
        cursor = self.connection.execute(plan.sql, plan.arguments(values))
        if plan.returns_rows:
            return Rows(plan.rows(cursor.fetchall()), keys=plan.keys, rowcount=-1)
        return Rows([], keys=(), rowcount=cursor.rowcount)


_INSERT_INBOX = (
    f"INSERT INTO {INBOX} (consumer, message_id, saga_id, processed_at, body_digest)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INBOX_DIGEST = f"SELECT body_digest FROM {INBOX} WHERE consumer = ? AND message_id = ?"
_CLAIM = (
    f"INSERT INTO {STEPS} (step, saga_id, status, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_STATUS = f"SELECT status FROM {STEPS} WHERE step = ? AND saga_id = ?"
_SET_STATUS = (
    f"INSERT INTO {STEPS} (step, saga_id, status, reason, updated_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (step, saga_id) DO UPDATE SET status = excluded.status,"
    " reason = excluded.reason, updated_at = excluded.updated_at"
)
_ENQUEUE = (
    f"INSERT INTO {OUTBOX} ({OUTBOX_COLUMNS}, created_at, sent_at, attempts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0) ON CONFLICT DO NOTHING"
)
_REQUEUE = f"UPDATE {OUTBOX} SET sent_at = NULL WHERE event_id = ?"
_OUTBOX_ROW = f"SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE event_id = ?"
_UNSENT_OF_SAGA = (
    f"SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE saga_id = ? AND sent_at IS NULL"
    " ORDER BY created_at"
)
_MARK_SENT = f"UPDATE {OUTBOX} SET sent_at = ?, attempts = attempts + 1 WHERE event_id = ?"
_PROBE = (
    "INSERT INTO sagakit_probe (name, probed_at) VALUES ('probe', ?)"
    " ON CONFLICT (name) DO UPDATE SET probed_at = excluded.probed_at"
)
_COUNT_ROWS = (
    f"SELECT (SELECT count(*) FROM {INBOX}), (SELECT count(*) FROM {OUTBOX}),"
    f" (SELECT count(*) FROM {STEPS})"
)
# SQLite's variables per statement: 32766 since 3.32; chunks stay well under.
_CHUNK = 500


class SQLiteRecorder(Recorder):
    """sagakit's records in a SQLite file.

    Args:
        path: The database file.
        lock: The store's writer lock (its ORM sessions take it too).
        busy_seconds: How long a statement waits for another process's lock.
        check: Called at the start of every write transaction (the store's check that its
            file is still the one it opened).
    """

    backend = BACKEND

    def __init__(
        self,
        path: str,
        *,
        lock: asyncio.Lock,
        busy_seconds: float,
        check: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._lock = lock
        self._busy = busy_seconds
        self._check = check
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._checkpointed_at = 0.0

    def _write_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = connect(self._path, busy_seconds=self._busy)
            # Checkpoints run off the loop (_after_commit).
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
        return self._writer

    def _after_commit(self) -> None:
        now = time.monotonic()
        if now - self._checkpointed_at < CHECKPOINT_EVERY_SECONDS or (
            self._checkpoint is not None and not self._checkpoint.done()
        ):
            return
        self._checkpointed_at = now
        if self._checkpointer is None:
            if self._path in {"", ":memory:"}:
                return
            # mode=rw: never makes a file (the writer's may have been taken away).
            self._checkpointer = sqlite3.connect(
                f"{pathlib.Path(self._path).absolute().as_uri()}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        loop = asyncio.get_running_loop()
        self._checkpoint = loop.run_in_executor(None, _checkpoint, self._checkpointer)

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = connect(self._path, busy_seconds=self._busy)
        return self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
        async with self._lock:
            if self._check is not None:
                self._check()
            connection = self._write_connection()
            # IMMEDIATE: the write lock now, waiting up to the busy timeout, instead of an
            # upgrade at the first write that fails at once if another process wrote.
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTransaction(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
            self._after_commit()

    async def prepare(self, statements: Sequence[Prepared]) -> None:
        for statement in statements:
            statement.plan(BACKEND, statement.start_up_keys())

    async def close(self) -> None:
        # The writer only between transactions: another delivery's may be open on it.
        async with self._lock:
            if self._checkpoint is not None:
                await asyncio.wait([self._checkpoint])
                self._checkpoint = None
            for connection in (self._writer, self._reader, self._checkpointer):
                if connection is not None:
                    with contextlib.suppress(sqlite3.Error):
                        connection.close()
            self._writer = self._reader = self._checkpointer = None

    # -- in a transaction --------------------------------------------------------------

    async def remember(
        self,
        transaction: Transaction,
        *,
        consumer: str,
        message_id: str,
        saga_id: str,
        digest: str | None,
        step: str | None,
        now: datetime,
    ) -> Remembered:
        connection = _connection(transaction)
        at = sqlite_time(now)
        inserted = connection.execute(
            _INSERT_INBOX, (consumer, message_id, saga_id, at, digest)
        ).rowcount
        if inserted != 1:
            found = connection.execute(_INBOX_DIGEST, (consumer, message_id)).fetchone()
            return Remembered(first=False, digest=found[0] if found else None)
        if step is None:
            return Remembered(first=True)
        claimed = connection.execute(_CLAIM, (step, saga_id, StepStatus.RUNNING.value, at)).rowcount
        if claimed == 1:
            return Remembered(first=True)
        status = connection.execute(_STATUS, (step, saga_id)).fetchone()
        return Remembered(first=True, status=StepStatus(status[0]) if status else None)

    async def finish(
        self,
        transaction: Transaction,
        *,
        step: str | None,
        saga_id: str,
        status: StepStatus | None,
        reason: str | None,
        rows: Sequence[OutboxRow],
        now: datetime,
    ) -> list[OutboxRow]:
        connection = _connection(transaction)
        if step is not None and status is not None:
            connection.execute(_SET_STATUS, (step, saga_id, status.value, reason, sqlite_time(now)))
        inserted: set[str] = set()
        again: dict[str, OutboxRow] = {}
        for row, values in zip(rows, outbox_values(rows, now), strict=True):
            if connection.execute(_ENQUEUE, (*values[:6], sqlite_time(values[6]))).rowcount == 1:
                inserted.add(row.event_id)
                continue
            # The same derived event id: announce it again with its original body.
            connection.execute(_REQUEUE, (row.event_id,))
            again[row.event_id] = outbox_row(
                connection.execute(_OUTBOX_ROW, (row.event_id,)).fetchone()
            )
        return requeued_in_order(rows, inserted, again)

    async def step_status(
        self, transaction: Transaction, *, step: str, saga_id: str
    ) -> StepStatus | None:
        found = _connection(transaction).execute(_STATUS, (step, saga_id)).fetchone()
        return StepStatus(found[0]) if found else None

    async def unsent_of_saga(self, transaction: Transaction, *, saga_id: str) -> list[OutboxRow]:
        rows = _connection(transaction).execute(_UNSENT_OF_SAGA, (saga_id,)).fetchall()
        return [outbox_row(row) for row in rows]

    async def probe(self, transaction: Transaction, *, now: datetime) -> None:
        _connection(transaction).execute(_PROBE, (sqlite_time(now),))

    # -- on their own --------------------------------------------------------------------

    async def mark_sent(self, event_ids: Sequence[str], *, now: datetime) -> None:
        if not event_ids:
            return
        at = sqlite_time(now)
        async with self.transaction() as transaction:
            _connection(transaction).executemany(_MARK_SENT, [(at, i) for i in event_ids])

    async def pending(self, *, created_before: datetime | None, limit: int) -> list[OutboxRow]:
        where = "sent_at IS NULL"
        args: list[Any] = []
        if created_before is not None:
            where += " AND created_at < ?"
            args.append(sqlite_time(created_before))
        query = f"SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE {where} ORDER BY created_at LIMIT ?"
        rows = self._read_connection().execute(query, (*args, limit)).fetchall()
        return [outbox_row(row) for row in rows]

    async def unsent_among(self, event_ids: Sequence[str]) -> list[OutboxRow]:
        found: list[tuple[Any, ...]] = []
        reader = self._read_connection()
        for start in range(0, len(event_ids), _CHUNK):
            chunk = event_ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = (
                f"SELECT {OUTBOX_COLUMNS}, created_at FROM {OUTBOX}"
                f" WHERE event_id IN ({marks}) AND sent_at IS NULL"
            )
            found.extend(reader.execute(query, chunk).fetchall())
        found.sort(key=lambda row: row[-1])
        return [outbox_row(row[:-1]) for row in found]

    async def count_pending(self) -> int:
        query = f"SELECT count(*) FROM {OUTBOX} WHERE sent_at IS NULL"
        return int(self._read_connection().execute(query).fetchone()[0])

    async def prune(self, table: str, *, before: datetime, batch_size: int) -> int:
        age = AGE_COLUMN[table]
        statement = (
            f"DELETE FROM {table} WHERE rowid IN"
            f" (SELECT rowid FROM {table} WHERE {age} < ? LIMIT ?)"
        )
        async with self.transaction() as transaction:
            cursor = _connection(transaction).execute(statement, (sqlite_time(before), batch_size))
            return max(cursor.rowcount, 0)

    async def count_rows(self) -> dict[str, int]:
        counts = self._read_connection().execute(_COUNT_ROWS).fetchone()
        return dict(zip((INBOX, OUTBOX, STEPS), map(int, counts), strict=True))


def _checkpoint(connection: sqlite3.Connection) -> None:
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        # The next one tries again; until then the log only grows.
        logger.warning("SQLite checkpoint failed: %s", exc)


def _connection(transaction: Transaction) -> sqlite3.Connection:
    assert isinstance(transaction, SQLiteTransaction)
    return transaction.connection
