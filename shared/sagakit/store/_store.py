"""Local persistence: the participant's own tables plus sagakit's inbox, outbox and step log.

Everything a handler changes, the inbox record of the message that caused it, the step's new
status and the events it emits are written in one transaction (docs/design.md §4 rule 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
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
    and_,
    bindparam,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    tuple_,
    update,
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
from sqlalchemy.sql import ColumnElement, Executable

from sagakit._context import utc_now
from sagakit.runtime._outage import StoreUnavailable
from sagakit.store._sql import Transaction, _Compiled
from sagakit.store._sqlite import inline_connector

_SQLITE_BUSY_SECONDS = 30.0
PRUNE_BATCH_SIZE = 500
"""Rows deleted per transaction by retention: each batch holds SQLite's writer for a few
milliseconds, and handlers get the store between batches."""

metadata = MetaData()

# What the store's statements run on: a write Transaction (the hot path), or an ORM session.
Executor = Transaction | AsyncSession

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


class StepStatus(StrEnum):
    """Where one participant's step stands for one saga."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event waiting to be published, exactly as it will go on the wire."""

    event_id: str
    saga_id: str
    routing_key: str
    body: str
    properties: dict[str, Any]
    headers: dict[str, str]


class Store:
    """One service's database: SQLite by default, PostgreSQL by URL.

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
        self._compiled: dict[tuple[Executable, tuple[str, ...]], _Compiled | None] = {}
        self._probe_ready = False
        # The SQLite file's identity when first written: a file removed (its directory
        # deleted, say) or replaced underneath open connections would silently take writes
        # that nobody will ever read, so every write transaction checks it first.
        self._path = _sqlite_path(parsed.database) if self.is_sqlite else None
        self._identity: tuple[int, int] | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The engine, created on first use so that nothing connects at import time."""
        if self._engine is None:
            self._engine = self._create_engine()
            self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        if not self.is_sqlite:
            # No overflow: a burst beyond the pool waits for a pooled connection instead of
            # opening (and, on return, closing) connections of its own, which cost more
            # than the transactions they would serve.
            return create_async_engine(
                self.url, pool_size=10, max_overflow=0, pool_pre_ping=True, hide_parameters=True
            )
        parsed = make_url(self.url)
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: error messages would otherwise quote outbox bodies (personal data).
        options: dict[str, Any] = {"connect_args": {"timeout": _SQLITE_BUSY_SECONDS}}
        if not parsed.query:
            # Statements run on the loop's thread instead of aiosqlite's (_sqlite.py says why).
            options = {
                "async_creator": inline_connector(
                    parsed.database or ":memory:", timeout=_SQLITE_BUSY_SECONDS
                )
            }
        engine = create_async_engine(self.url, hide_parameters=True, **options)

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
        """Create every table that does not exist yet (safe when replicas start together)."""
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
                return
            except OperationalError as error:
                # SQLite has no advisory lock: another process created a table between our
                # check and our CREATE; the next pass sees it.
                if attempt == 2 or "already exists" not in str(error):
                    raise

    async def probe(self) -> None:
        """Write to the store (one row of ``sagakit_probe``); raises if it cannot.

        ``SELECT 1`` passes on a read-only file, a full disk or a standby; this does not.
        """
        if not self._probe_ready:
            async with self.engine.begin() as conn:
                await conn.run_sync(probe.create, checkfirst=True)
            self._probe_ready = True
        async with self.write() as transaction:
            values = {"name": "probe", "probed_at": utc_now()}
            if not await self.insert_if_absent(transaction, probe, values):
                await transaction.execute(_PROBE_WRITE, {"probed_at": values["probed_at"]})

    async def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed when the block ends without error."""
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
        """One write transaction, committed when the block ends without error.

        The hot path: statements run through ``Transaction.execute`` skip SQLAlchemy's
        execution layer (``_sql.py`` says how and why); ``Transaction.session`` gives the
        ORM in the same transaction.
        """
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            connection = await stack.enter_async_context(self.engine.connect())
            async with connection.begin():
                if self._path is not None:
                    self._check_file()
                raw = await connection.get_raw_connection()
                transaction = Transaction(
                    connection,
                    raw.driver_connection,
                    adapter=raw.dbapi_connection,
                    is_sqlite=self.is_sqlite,
                    cache=self._compiled,
                )
                try:
                    yield transaction
                    await transaction._before_commit()
                finally:
                    await transaction._close()

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
        """A session for reads only."""
        _ = self.engine
        assert self._sessions is not None
        async with self._sessions() as session:
            yield session

    # -- inbox -------------------------------------------------------------------------

    async def remember_message(
        self,
        session: Executor,
        *,
        consumer: str,
        message_id: str,
        saga_id: uuid.UUID,
        body_digest: str | None = None,
    ) -> bool:
        """Record that ``consumer`` handled ``message_id``; False if it already had.

        ``body_digest`` (see ``body_digest``) is kept with the record, so that a later
        message with the same id can be told apart from a true duplicate.
        """
        values = {
            "consumer": consumer,
            "message_id": message_id,
            "saga_id": str(saga_id),
            "processed_at": utc_now(),
            "body_digest": body_digest,
        }
        return await self.insert_if_absent(session, inbox, values)

    async def remembered_digest(
        self, session: Executor, *, consumer: str, message_id: str
    ) -> str | None:
        """The body digest recorded with ``message_id`` (None if none was recorded)."""
        result = await session.execute(
            _INBOX_DIGEST, {"w_consumer": consumer, "w_message_id": message_id}
        )
        digest = result.scalar_one_or_none()
        return str(digest) if digest is not None else None

    # -- step log ----------------------------------------------------------------------

    async def claim_step(
        self, session: Executor, *, step: str, saga_id: uuid.UUID
    ) -> StepStatus | None:
        """Start ``step`` for a saga unless it has a status already.

        Returns None when the claim succeeded (the caller now owns the step), else the
        status the step already has. On PostgreSQL a concurrent claim for the same saga
        waits on the unique index until this transaction ends, then sees its outcome.
        """
        values = {
            "step": step,
            "saga_id": str(saga_id),
            "status": StepStatus.RUNNING.value,
            "updated_at": utc_now(),
        }
        if await self.insert_if_absent(session, saga_steps, values):
            return None
        return await self.step_status(session, step=step, saga_id=saga_id, lock=True)

    async def step_status(
        self, session: Executor, *, step: str, saga_id: uuid.UUID, lock: bool = False
    ) -> StepStatus | None:
        """The step's status for a saga, or None if the step never started."""
        query = _STEP_STATUS_FOR_UPDATE if lock else _STEP_STATUS
        result = await session.execute(query, {"w_step": step, "w_saga_id": str(saga_id)})
        status = result.scalar_one_or_none()
        return StepStatus(status) if status is not None else None

    async def set_step_status(
        self,
        session: Executor,
        *,
        step: str,
        saga_id: uuid.UUID,
        status: StepStatus,
        reason: str | None = None,
    ) -> None:
        """Move the step to ``status`` for a saga (creating the record if needed)."""
        values = {"status": status.value, "reason": reason, "updated_at": utc_now()}
        result = await session.execute(
            _SET_STEP_STATUS, {"w_step": step, "w_saga_id": str(saga_id), **values}
        )
        if getattr(result, "rowcount", 0) == 0:
            await session.execute(
                saga_steps.insert(), {"step": step, "saga_id": str(saga_id), **values}
            )

    # -- outbox ------------------------------------------------------------------------

    async def add_to_outbox(self, session: Executor, rows: Iterable[OutboxRow]) -> list[OutboxRow]:
        """Queue events for publishing; an event already queued is queued again.

        Returns the rows as they will be published: an event queued before keeps the body
        it was first written with.
        """
        now = utc_now()
        queued = []
        for position, row in enumerate(rows):
            values = {
                "event_id": row.event_id,
                "saga_id": row.saga_id,
                "routing_key": row.routing_key,
                "body": row.body,
                "properties": row.properties,
                "headers": row.headers,
                # Rows of one transaction are apart by a microsecond, so the relay's
                # oldest-first order is the order they were written in, even after a crash.
                "created_at": now + timedelta(microseconds=position),
                "sent_at": None,
                "attempts": 0,
            }
            if await self.insert_if_absent(session, outbox, values):
                queued.append(row)
                continue
            # The same derived event id: announce it again with its original body.
            await session.execute(_REQUEUE, {"w_event_id": row.event_id})
            result = await session.execute(_OUTBOX_ROW, {"w_event_id": row.event_id})
            queued.append(_outbox_row(result.mappings().one()))
        return queued

    async def pending_outbox(
        self, session: AsyncSession, *, older_than: timedelta | None = None, limit: int = 500
    ) -> list[OutboxRow]:
        """Unsent events, oldest first (only those older than ``older_than`` if given)."""
        query = select(outbox).where(outbox.c.sent_at.is_(None))
        if older_than is not None:
            query = query.where(outbox.c.created_at < utc_now() - older_than)
        query = query.order_by(outbox.c.created_at).limit(limit)
        if not self.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        return [_outbox_row(r) for r in (await session.execute(query)).mappings()]

    async def unsent_among(
        self, session: AsyncSession, event_ids: Iterable[str]
    ) -> list[OutboxRow]:
        """Those of these events not marked sent, oldest first."""
        wanted = list(event_ids)
        if not wanted:
            return []
        query = (
            select(outbox)
            .where(outbox.c.event_id.in_(wanted), outbox.c.sent_at.is_(None))
            .order_by(outbox.c.created_at)
        )
        return [_outbox_row(r) for r in (await session.execute(query)).mappings()]

    async def unsent_of_saga(self, session: Executor, *, saga_id: uuid.UUID) -> list[OutboxRow]:
        """The saga's events this store has not marked sent, oldest first."""
        result = await session.execute(_UNSENT_OF_SAGA, {"w_saga_id": str(saga_id)})
        return [_outbox_row(r) for r in result.mappings()]

    async def mark_sent(self, session: Executor, event_ids: Sequence[str]) -> None:
        """Mark events as published."""
        if not event_ids:
            return
        now = utc_now()
        if isinstance(session, Transaction):
            # One statement per row runs on the driver; an expanding IN would not.
            for event_id in event_ids:
                await session.execute(_MARK_ONE_SENT, {"w_event_id": event_id, "now": now})
            return
        await session.execute(_MARK_SENT, {"w_event_ids": list(event_ids), "now": now})

    async def count_pending_outbox(self, session: AsyncSession) -> int:
        """How many events wait to be published (the outbox backlog)."""
        from sqlalchemy import func

        query = select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
        return int((await session.execute(query)).scalar_one())

    async def insert_if_absent(
        self, session: Executor, table: Table, values: dict[str, Any]
    ) -> bool:
        """Insert a row unless its key exists (waiting on a concurrent insert of it on
        PostgreSQL); True if this call inserted it."""
        statements = _INSERT_IF_ABSENT_SQLITE if self.is_sqlite else _INSERT_IF_ABSENT_POSTGRESQL
        statement = statements.get(table.name)
        if statement is None:  # not one of sagakit's hot-path tables: build it
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
        ``now - step_log_older_than`` go only when that is given: a step's record is what
        makes a late compensation undo it, and nothing here knows whether its saga ended.
        Rows go ``batch_size`` per transaction, with a pause of ``pause`` seconds between
        batches, so that handlers waiting for the store are not held up.
        """
        now = now or utc_now()
        cutoff = now - older_than
        plan: list[tuple[Table, ColumnElement[bool]]] = [
            (inbox, inbox.c.processed_at < cutoff),
            (outbox, and_(outbox.c.sent_at.is_not(None), outbox.c.sent_at < cutoff)),
        ]
        if step_log_older_than is not None:
            plan.append((saga_steps, saga_steps.c.updated_at < now - step_log_older_than))
        deleted = {}
        for table, condition in plan:
            deleted[table.name] = await self.delete_in_batches(
                table, condition, batch_size=batch_size, pause=pause
            )
        return deleted

    async def delete_in_batches(
        self,
        table: Table,
        condition: ColumnElement[bool],
        *,
        batch_size: int = PRUNE_BATCH_SIZE,
        pause: float = 0.0,
    ) -> int:
        """Delete the rows of ``table`` that match ``condition``, ``batch_size`` per
        transaction; returns how many went."""
        key = list(table.primary_key.columns)
        chosen = select(*key).where(condition).limit(batch_size)
        if not self.is_sqlite:
            # Replicas pruning at once take different rows instead of waiting on each other.
            chosen = chosen.with_for_update(skip_locked=True)
        target = key[0].in_(chosen.scalar_subquery()) if len(key) == 1 else tuple_(*key).in_(chosen)
        statement = delete(table).where(target)
        total = 0
        while True:
            # One short transaction per batch: on SQLite it holds the store's write lock,
            # which handlers waiting for it get before the next batch does.
            async with self.transaction() as session:
                result = await session.execute(statement)
            count = max(int(getattr(result, "rowcount", 0)), 0)
            total += count
            if count < batch_size:
                return total
            await asyncio.sleep(pause)

    async def count_rows(self) -> dict[str, int]:
        """How many rows sagakit's tables hold (inbox, outbox, step log), by table."""
        counts = {}
        async with self.read() as session:
            for table in (inbox, outbox, saga_steps):
                query = select(func.count()).select_from(table)
                counts[table.name] = int((await session.execute(query)).scalar_one())
        return counts


# Hot-path statements, built once: building a statement per call costs more than running it
# on SQLite. Bound parameters named w_* select rows; the others are column values.
_INSERT_IF_ABSENT_SQLITE = {
    table.name: sqlite.insert(table).on_conflict_do_nothing()
    for table in (inbox, saga_steps, outbox, probe)
}
_INSERT_IF_ABSENT_POSTGRESQL = {
    table.name: postgresql.insert(table).on_conflict_do_nothing()
    for table in (inbox, saga_steps, outbox, probe)
}
_STEP_WHERE = (
    saga_steps.c.step == bindparam("w_step"),
    saga_steps.c.saga_id == bindparam("w_saga_id"),
)
_STEP_STATUS = select(saga_steps.c.status).where(*_STEP_WHERE)
_STEP_STATUS_FOR_UPDATE = _STEP_STATUS.with_for_update()
_SET_STEP_STATUS = update(saga_steps).where(*_STEP_WHERE)
_INBOX_DIGEST = select(inbox.c.body_digest).where(
    inbox.c.consumer == bindparam("w_consumer"),
    inbox.c.message_id == bindparam("w_message_id"),
)
_PROBE_WRITE = update(probe).where(probe.c.name == "probe").values(probed_at=bindparam("probed_at"))
_UNSENT_OF_SAGA = (
    select(outbox)
    .where(outbox.c.saga_id == bindparam("w_saga_id"), outbox.c.sent_at.is_(None))
    .order_by(outbox.c.created_at)
)
_OUTBOX_ROW = select(outbox).where(outbox.c.event_id == bindparam("w_event_id"))
_REQUEUE = update(outbox).where(outbox.c.event_id == bindparam("w_event_id")).values(sent_at=None)
_MARK_ONE_SENT = (
    update(outbox)
    .where(outbox.c.event_id == bindparam("w_event_id"))
    .values(sent_at=bindparam("now"), attempts=outbox.c.attempts + 1)
)
_MARK_SENT = (
    update(outbox)
    .where(outbox.c.event_id.in_(bindparam("w_event_ids", expanding=True)))
    .values(sent_at=bindparam("now"), attempts=outbox.c.attempts + 1)
)


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


def _outbox_row(r: Any) -> OutboxRow:
    return OutboxRow(
        event_id=r["event_id"],
        saga_id=r["saga_id"],
        routing_key=r["routing_key"],
        body=r["body"],
        properties=dict(r["properties"]),
        headers=dict(r["headers"]),
    )
