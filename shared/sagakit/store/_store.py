"""Local persistence: the participant's own tables plus sagakit's inbox, outbox and step log.

Everything a handler changes, the inbox record of the message that caused it, the step's new
status and the events it emits are written in one transaction (docs/design.md §4 rule 2).
The tables' schema is here; what sagakit writes to them, and how, is its recorder's
(``_recorder.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from sagakit._context import utc_now
from sagakit.runtime._outage import StoreUnavailable
from sagakit.store._postgres import PostgresRecorder
from sagakit.store._prepared import Prepared
from sagakit.store._recorder import (
    STEP_RESULTS,
    OutboxRow,
    Recorder,
    Remembered,
    StepStatus,
    Transaction,
)
from sagakit.store._sqlite import SQLiteRecorder

# OutboxRow and StepStatus live with the recorder; imported from here too.
__all__ = (
    "PRUNE_BATCH_SIZE",
    "OutboxRow",
    "StepStatus",
    "Store",
    "body_digest",
    "inbox",
    "metadata",
    "outbox",
    "probe",
    "saga_steps",
)

_SQLITE_BUSY_SECONDS = 30.0
PRUNE_BATCH_SIZE = 500
"""Rows deleted per transaction by retention: each batch holds SQLite's writer for a few
milliseconds, and handlers get the store between batches."""

metadata = MetaData()

# Any constant works; it only has to be the same in every process that creates the schema.
_SCHEMA_LOCK = 0x5A6A_C17

inbox = Table(
    "sagakit_inbox",
    metadata,
    Column("consumer", String(200), primary_key=True),
    Column("message_id", String(64), primary_key=True),
    Column("saga_id", String(36), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    # A digest of the body as it arrived: the same id with another body is not a duplicate.
    # (Null in rows written before the column existed.)
    Column("body_digest", String(32)),
    # Retention deletes by age (Store.prune): without it, each pass would scan the table.
    Index("ix_sagakit_inbox_processed_at", "processed_at"),
)

# One row per store, written by the readiness and outage probes: a store that answers
# SELECT 1 may still refuse writes (a read-only file, a full disk, a standby).
probe = Table(
    "sagakit_probe",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("probed_at", DateTime(timezone=True), nullable=False),
)

saga_steps = Table(
    "sagakit_saga_steps",
    metadata,
    Column("step", String(100), primary_key=True),
    Column("saga_id", String(36), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("reason", String(200)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_sagakit_saga_steps_updated_at", "updated_at"),
)

outbox = Table(
    "sagakit_outbox",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("saga_id", String(36), nullable=False),
    Column("routing_key", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_sagakit_outbox_pending", "sent_at", "created_at"),
)


class Store:
    """One service's database: SQLite by default, PostgreSQL by URL.

    sagakit's records and the handlers' writes go through the store's recorder
    (``_recorder.py``), on the driver, in one transaction per delivery (``write``). The
    SQLAlchemy engine serves the rest: creating the schema, ``initialize`` hooks, tools and
    tests that read the tables with the ORM.

    Args:
        url: A SQLAlchemy async URL, ``sqlite+aiosqlite:///path.db`` or
            ``postgresql+asyncpg://user@host/db``.
        metadata: The service's own table metadata, created beside sagakit's tables.
    """

    def __init__(self, url: str, *, metadata: Sequence[MetaData] = ()) -> None:
        self.url = url
        self._metadata = (globals()["metadata"], *metadata)
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        # SQLite has one writer; serialising in-process avoids lock upgrade deadlocks.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._probe_ready = False
        # The SQLite file's identity when first written: a file removed (its directory
        # deleted, say) or replaced underneath open connections would silently take writes
        # that nobody will ever read, so every write transaction checks it first.
        self._path = _sqlite_path(parsed.database) if self.is_sqlite else None
        self._identity: tuple[int, int] | None = None
        self._recorder: Recorder | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The engine, created on first use so that nothing connects at import time."""
        if self._engine is None:
            self._engine = self._create_engine()
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    @property
    def recorder(self) -> Recorder:
        """sagakit's records on the driver (created on first use; connects when used)."""
        if self._recorder is None:
            if self.is_sqlite:
                database = make_url(self.url).database or ""
                _mkdir(database)
                assert self._write_lock is not None
                self._recorder = SQLiteRecorder(
                    database,
                    lock=self._write_lock,
                    busy_seconds=_SQLITE_BUSY_SECONDS,
                    check=self._check_file if self._path is not None else None,
                )
            else:
                self._recorder = PostgresRecorder(self.url)
        return self._recorder

    def _create_engine(self) -> AsyncEngine:
        if not self.is_sqlite:
            # No overflow: a burst beyond the pool waits for a pooled connection instead of
            # opening (and, on return, closing) connections of its own. The engine serves
            # the cold paths only (the recorder has its own pool), so its pings stay.
            return create_async_engine(
                self.url, pool_size=5, max_overflow=0, pool_pre_ping=True, hide_parameters=True
            )
        _mkdir(make_url(self.url).database or "")
        # hide_parameters: error messages would otherwise quote outbox bodies (personal data).
        engine = create_async_engine(
            self.url, hide_parameters=True, connect_args={"timeout": _SQLITE_BUSY_SECONDS}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL + NORMAL survives a killed process (not a power cut) without fsync per commit.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_SECONDS * 1000)}")
            cursor.close()

        return engine

    async def create_schema(self) -> None:
        """Create every table that does not exist yet (safe when replicas start together),
        then compile the service's ``Prepared`` statements for the driver (``prepare``)."""
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    if not self.is_sqlite:
                        # Replicas starting together would race between "does the table
                        # exist" and "create it"; the lock ends with this transaction.
                        await conn.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
                        )
                    for md in self._metadata:
                        await conn.run_sync(md.create_all)
                    # create_all leaves existing tables alone: columns and indexes added
                    # later are added here.
                    await conn.run_sync(_add_missing_columns)
                    await conn.run_sync(_create_missing_indexes)
                if self._path is not None:
                    self._check_file()
                self._probe_ready = True
                break
            except OperationalError as error:
                # SQLite has no advisory lock: another process created a table between our
                # check and our CREATE; the next pass sees it.
                if attempt == 2 or "already exists" not in str(error):
                    raise
        await self.prepare()

    async def prepare(self, statements: Sequence[Prepared] | None = None) -> None:
        """Compile ``statements`` (by default every ``Prepared`` on this store's tables)
        for the driver now; raises ``StatementRefused`` for one it cannot run."""
        if statements is None:
            tables = [table for md in self._metadata[1:] for table in md.tables.values()]
            statements = Prepared.on_tables(tables)
        await self.recorder.prepare(statements)

    async def probe(self) -> None:
        """Write to the store (one row of ``sagakit_probe``); raises if it cannot.

        ``SELECT 1`` passes on a read-only file, a full disk or a standby; this does not.
        """
        if not self._probe_ready:
            async with self.engine.begin() as conn:
                await conn.run_sync(probe.create, checkfirst=True)
            self._probe_ready = True
        async with self.write() as transaction:
            await self.recorder.probe(transaction, now=utc_now())

    async def dispose(self) -> None:
        """Close every connection (the next use opens new ones)."""
        if self._recorder is not None:
            await self._recorder.close()
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """An ORM session in one transaction, committed when the block ends without error
        (the engine's: for ``initialize`` hooks and tools, not the delivery path)."""
        _ = self.engine
        assert self._sessions is not None
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            session = await stack.enter_async_context(self._sessions())
            async with session.begin():
                if self._path is not None:
                    self._check_file()
                yield session

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        """One write transaction on the driver, committed when the block ends without
        error: sagakit's records and the handler's statements (``Transaction.execute``)."""
        async with self.recorder.transaction() as transaction:
            yield transaction

    def _check_file(self) -> None:
        assert self._path is not None
        try:
            stat = os.stat(self._path)
        except OSError as error:
            raise StoreUnavailable(f"the SQLite file {self._path} is gone ({error})") from error
        identity = (stat.st_dev, stat.st_ino)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            raise StoreUnavailable(
                f"the SQLite file {self._path} was replaced while the service had it open"
                " (restart the service to use the new file)"
            )

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for reads only (the engine's)."""
        _ = self.engine
        assert self._sessions is not None
        async with self._sessions() as session:
            yield session

    # -- a delivery's records, in its transaction ---------------------------------------

    async def remember(
        self,
        transaction: Transaction,
        *,
        consumer: str,
        message_id: str,
        saga_id: uuid.UUID | str,
        body_digest: str | None = None,
        step: str | None = None,
    ) -> Remembered:
        """Record that ``consumer`` handled ``message_id``; the first time, and given a
        ``step``, claim the step too (see ``Remembered``).

        ``body_digest`` (see ``body_digest``) is kept with the record, so that a later
        message with the same id can be told apart from a true duplicate. On PostgreSQL a
        concurrent claim for the same saga waits on the unique index until the other
        transaction ends, then sees its outcome.
        """
        return await self.recorder.remember(
            transaction,
            consumer=consumer,
            message_id=message_id,
            saga_id=str(saga_id),
            digest=body_digest,
            step=step,
            now=utc_now(),
        )

    async def finish(
        self,
        transaction: Transaction,
        *,
        saga_id: uuid.UUID | str,
        step: str | None = None,
        status: StepStatus | None = None,
        reason: str | None = None,
        rows: Sequence[OutboxRow] = (),
    ) -> list[OutboxRow]:
        """Move the step to ``status`` (if given) and queue ``rows`` for publishing.

        Returns the rows as they will be published: an event queued before is queued again
        with the body it was first written with.
        """
        return await self.recorder.finish(
            transaction,
            step=step,
            saga_id=str(saga_id),
            status=status,
            reason=reason,
            rows=rows,
            now=utc_now(),
        )

    async def step_status(
        self, transaction: Transaction, *, step: str, saga_id: uuid.UUID | str
    ) -> StepStatus | None:
        """The step's status for a saga, or None if the step never started."""
        return await self.recorder.step_status(transaction, step=step, saga_id=str(saga_id))

    async def unsent_of_saga(
        self, transaction: Transaction, *, saga_id: uuid.UUID | str
    ) -> list[OutboxRow]:
        """The saga's events this store has not marked sent, oldest first."""
        return await self.recorder.unsent_of_saga(transaction, saga_id=str(saga_id))

    # -- the outbox, on its own ---------------------------------------------------------

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        """Mark events as published (one statement per batch on PostgreSQL)."""
        await self.recorder.mark_sent(event_ids, now=utc_now())

    async def pending_outbox(
        self, *, older_than: timedelta | None = None, limit: int = 500
    ) -> list[OutboxRow]:
        """Unsent events, oldest first (only those older than ``older_than`` if given)."""
        before = utc_now() - older_than if older_than is not None else None
        return await self.recorder.pending(created_before=before, limit=limit)

    async def unsent_among(self, event_ids: Iterable[str]) -> list[OutboxRow]:
        """Those of these events not marked sent, oldest first."""
        return await self.recorder.unsent_among(list(event_ids))

    async def count_pending_outbox(self) -> int:
        """How many events wait to be published (the outbox backlog)."""
        return await self.recorder.count_pending()

    async def insert_if_absent(
        self, session: AsyncSession, table: Table, values: dict[str, Any]
    ) -> bool:
        """Insert a row unless its key exists (waiting on a concurrent insert of it on
        PostgreSQL), in an ORM session; True if this call inserted it."""
        dialect = sqlite if self.is_sqlite else postgresql
        statement = dialect.insert(table).on_conflict_do_nothing()
        result = await session.execute(statement, values)
        return bool(getattr(result, "rowcount", 0) == 1)

    # -- retention ---------------------------------------------------------------------

    async def prune(
        self,
        *,
        older_than: timedelta,
        step_log_older_than: timedelta | None = None,
        now: datetime | None = None,
        batch_size: int = PRUNE_BATCH_SIZE,
        pause: float = 0.0,
    ) -> dict[str, int]:
        """Delete what retention no longer keeps; returns how many rows went, by table
        pruned.

        Inbox records processed, and outbox rows sent, before ``now - older_than`` go; an
        outbox row not sent yet stays, however old. Step-log rows last changed before
        ``now - step_log_older_than`` (and the results completed steps kept for their
        compensations, if this store has them) go only when that is given: a step's record is what
        makes a late compensation undo it, and nothing here knows whether its saga ended.
        Rows go ``batch_size`` per transaction, with a pause of ``pause`` seconds between
        batches, so that handlers waiting for the store are not held up.
        """
        now = now or utc_now()
        plan = [(inbox.name, now - older_than), (outbox.name, now - older_than)]
        if step_log_older_than is not None:
            plan.append((saga_steps.name, now - step_log_older_than))
            if any(STEP_RESULTS in md.tables for md in self._metadata):
                # A step's kept result is only read by its compensation, which needs the
                # step's record too: it goes with the step log.
                plan.append((STEP_RESULTS, now - step_log_older_than))
        deleted = {}
        for table, before in plan:
            total = 0
            while True:
                # One short transaction per batch: on SQLite it holds the store's write
                # lock, which handlers waiting for it get before the next batch does.
                count = await self.recorder.prune(table, before=before, batch_size=batch_size)
                total += count
                if count < batch_size:
                    break
                await asyncio.sleep(pause)
            deleted[table] = total
        return deleted

    async def count_rows(self) -> dict[str, int]:
        """How many rows sagakit's tables hold (inbox, outbox, step log), by table."""
        return await self.recorder.count_rows()


def _mkdir(database: str) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _create_missing_indexes(connection: Connection) -> None:
    for table in (inbox, saga_steps, outbox):
        for index in table.indexes:
            index.create(connection, checkfirst=True)


# Columns added after a table was first released: created_all leaves existing tables alone.
_ADDED_COLUMNS = ((inbox, "body_digest"),)


def _add_missing_columns(connection: Connection) -> None:
    inspector = inspect(connection)
    for table, name in _ADDED_COLUMNS:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        if name not in present:
            column = table.c[name]
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))


def body_digest(body: bytes) -> str:
    """The digest of a message body kept in the inbox (128 bits of BLAKE2b, hex)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def _sqlite_path(database: str | None) -> str | None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)
