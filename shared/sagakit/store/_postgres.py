"""The recorder on PostgreSQL: asyncpg itself, fewest round trips per delivery.

Each round trip costs the service and the server more than the statement in it, so a
delivery's records take two statements: ``remember`` inserts the inbox record and claims the
step in one (data-modifying CTEs), ``finish`` sets the step's status and queues its events in
one (the rows as arrays, ``unnest``). asyncpg prepares each statement once per connection
(its statement cache) and sends the values in binary. Sent marks go as one
``UPDATE ... WHERE event_id = ANY($2)`` per batch, outside any transaction.

The pool is asyncpg's, with no reset query on release (the recorder's transactions always
end) and no ping on checkout: a connection that broke fails its statement, which the
breaker classifies (``runtime/_outage.py``), and the pool replaces closed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from sagakit.store._prepared import Prepared, Rows, dialect_for, result_processors
from sagakit.store._recorder import (
    AGE_COLUMN,
    INBOX,
    OUTBOX,
    OUTBOX_COLUMNS,
    PROBE,
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

BACKEND = "postgresql"
POOL_SIZE = 10
# As SQLAlchemy's pool_timeout: a pool that gives no connection this long is a store that
# stopped answering (the breaker then asks it with a probe).
_ACQUIRE_SECONDS = 30.0
_CLOSE_SECONDS = 5.0


def asyncpg_dsn(url: str) -> str:
    """An asyncpg DSN from a SQLAlchemy URL (``postgresql+asyncpg://...``)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


class PostgresTransaction(Transaction):
    """A write transaction on one pooled connection."""

    backend = BACKEND
    __slots__ = ("connection",)

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def _run(self, prepared: Prepared, values: Mapping[str, Any]) -> Rows:
        plan = prepared.plan(BACKEND, tuple(values))
        arguments = plan.arguments(values)
        if not plan.returns_rows:
            status = await self.connection.execute(plan.sql, *arguments)
            return Rows([], keys=(), rowcount=_rowcount(status))
        if not plan.resolved:
            plan = await _resolve(self.connection, prepared, tuple(values), plan)
        records = await self.connection.fetch(plan.sql, *arguments)
        return Rows(plan.rows(records), keys=plan.keys, rowcount=len(records))


async def _resolve(connection: Any, prepared: Prepared, keys: Sequence[str], plan: Any) -> Any:
    # Some result processors (NUMERIC's) need the column types the server reports.
    statement = await connection.prepare(plan.sql)
    oids = [attribute.type.oid for attribute in statement.get_attributes()]
    resolved = plan.with_result_processors(result_processors(plan, dialect_for(BACKEND), oids))
    prepared.remember(BACKEND, keys, resolved)
    return resolved


def _rowcount(status: str) -> int:
    # asyncpg answers with the command tag: "INSERT 0 1", "UPDATE 3", "DELETE 0".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return -1


# A first delivery's inbox record and its step's claim, in one statement. The SELECT sees
# the snapshot from before the CTEs' inserts: a claim that lost to a concurrent one (it
# waited on the key, then did nothing) finds no status there, and asks again (rare).
_REMEMBER_AND_CLAIM = f"""
WITH remembered AS (
    INSERT INTO {INBOX} (consumer, message_id, saga_id, processed_at, body_digest)
    VALUES ($1::varchar, $2::varchar, $3::varchar, $4::timestamptz, $5::varchar)
    ON CONFLICT DO NOTHING
    RETURNING 1
), claimed AS (
    INSERT INTO {STEPS} (step, saga_id, status, updated_at)
    SELECT $6::varchar, $3::varchar, 'running', $4::timestamptz FROM remembered
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT
    EXISTS (SELECT FROM remembered) AS first,
    EXISTS (SELECT FROM claimed) AS claimed,
    (SELECT body_digest FROM {INBOX} WHERE consumer = $1 AND message_id = $2) AS digest,
    (SELECT status FROM {STEPS} WHERE step = $6 AND saga_id = $3 FOR UPDATE) AS status
"""
_REMEMBER = f"""
WITH remembered AS (
    INSERT INTO {INBOX} (consumer, message_id, saga_id, processed_at, body_digest)
    VALUES ($1::varchar, $2::varchar, $3::varchar, $4::timestamptz, $5::varchar)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT
    EXISTS (SELECT FROM remembered) AS first,
    (SELECT body_digest FROM {INBOX} WHERE consumer = $1 AND message_id = $2) AS digest
"""
_INBOX_DIGEST = f"SELECT body_digest FROM {INBOX} WHERE consumer = $1 AND message_id = $2"
_STATUS_FOR_UPDATE = f"SELECT status FROM {STEPS} WHERE step = $1 AND saga_id = $2 FOR UPDATE"
_STATUS = f"SELECT status FROM {STEPS} WHERE step = $1 AND saga_id = $2"
_SET_STATUS = f"""
INSERT INTO {STEPS} (step, saga_id, status, reason, updated_at)
VALUES ($1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::timestamptz)
ON CONFLICT (step, saga_id) DO UPDATE
SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
"""
_ENQUEUE = f"""
INSERT INTO {OUTBOX} ({OUTBOX_COLUMNS}, created_at, sent_at, attempts)
SELECT e, s, r, b, p::json, h::json, c, NULL, 0
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[]) AS u(e, s, r, b, p, h, c)
ON CONFLICT DO NOTHING
RETURNING event_id
"""
# The step's status and the events, in one statement (the CTE runs though nothing reads it).
_FINISH = f"""
WITH status AS (
    INSERT INTO {STEPS} (step, saga_id, status, reason, updated_at)
    VALUES ($8::varchar, $9::varchar, $10::varchar, $11::varchar, $12::timestamptz)
    ON CONFLICT (step, saga_id) DO UPDATE
    SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
)
{_ENQUEUE}"""
_REQUEUE = f"""
UPDATE {OUTBOX} SET sent_at = NULL WHERE event_id = ANY($1::varchar[])
RETURNING {OUTBOX_COLUMNS}
"""
_UNSENT_OF_SAGA = f"""
SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE saga_id = $1 AND sent_at IS NULL
ORDER BY created_at
"""
_MARK_SENT = f"""
UPDATE {OUTBOX} SET sent_at = $1, attempts = attempts + 1 WHERE event_id = ANY($2::varchar[])
"""
_PROBE = f"""
INSERT INTO {PROBE} (name, probed_at) VALUES ('probe', $1)
ON CONFLICT (name) DO UPDATE SET probed_at = EXCLUDED.probed_at
"""
_UNSENT_AMONG = f"""
SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE event_id = ANY($1::varchar[]) AND sent_at IS NULL
ORDER BY created_at
"""
_COUNT_PENDING = f"SELECT count(*) FROM {OUTBOX} WHERE sent_at IS NULL"
_COUNT_ROWS = f"""
SELECT (SELECT count(*) FROM {INBOX}), (SELECT count(*) FROM {OUTBOX}),
       (SELECT count(*) FROM {STEPS})
"""


async def _no_reset(_connection: Any) -> None:
    """The pool's reset on release: no reset query (a round trip per transaction); asyncpg
    still rolls back a transaction left open, and the recorder sets no session state."""


async def _json_codecs(connection: Any) -> None:
    # JSON in and out as SQLAlchemy's asyncpg dialect sets it up: its JSON types serialise
    # values themselves, and read what this codec decodes.
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )


class PostgresRecorder(Recorder):
    """sagakit's records in a PostgreSQL database.

    Args:
        url: A SQLAlchemy URL (``postgresql+asyncpg://user@host/db``).
        pool_size: Connections at most.
    """

    backend = BACKEND

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self._dsn = asyncpg_dsn(url)
        self._pool_size = pool_size
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None

    async def _connections(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    reset=_no_reset,
                    init=_json_codecs,
                    timeout=10,
                )
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        pool = await self._connections()
        async with pool.acquire(timeout=_ACQUIRE_SECONDS) as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                yield PostgresTransaction(connection)
            except BaseException:
                try:
                    await transaction.rollback()
                except Exception:
                    connection.terminate()
                raise
            await transaction.commit()

    async def prepare(self, statements: Sequence[Prepared]) -> None:
        if not statements:
            return
        pool = await self._connections()
        async with pool.acquire() as connection:
            for statement in statements:
                keys = statement.start_up_keys()
                plan = statement.plan(BACKEND, keys)
                # The server parses and plans it now: a statement it refuses, on a table or
                # column it does not have, fails the start, not a delivery.
                prepared = await connection.prepare(plan.sql)
                if plan.returns_rows:
                    oids = [a.type.oid for a in prepared.get_attributes()]
                    processors = result_processors(plan, dialect_for(BACKEND), oids)
                    statement.remember(BACKEND, keys, plan.with_result_processors(processors))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Connections still in use finish their work first, as SQLAlchemy's dispose lets
        # them; past a few seconds (a server that stopped answering) they are cut.
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_SECONDS)
        except (TimeoutError, Exception):
            pool.terminate()

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
        if step is None:
            row = await connection.fetchrow(_REMEMBER, consumer, message_id, saga_id, now, digest)
            first, recorded = row[0], row[1]
            if not first and recorded is None:
                recorded = await connection.fetchval(_INBOX_DIGEST, consumer, message_id)
            return Remembered(first=first, digest=None if first else recorded)
        row = await connection.fetchrow(
            _REMEMBER_AND_CLAIM, consumer, message_id, saga_id, now, digest, step
        )
        first, claimed, recorded, status = row
        if not first:
            if recorded is None:  # recorded by a transaction after our snapshot
                recorded = await connection.fetchval(_INBOX_DIGEST, consumer, message_id)
            return Remembered(first=False, digest=recorded)
        if claimed:
            return Remembered(first=True)
        if status is None:  # claimed by a transaction that committed after our snapshot
            status = await connection.fetchval(_STATUS_FOR_UPDATE, step, saga_id)
        return Remembered(first=True, status=StepStatus(status) if status else None)

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
        sets_status = step is not None and status is not None
        status_args = (step, saga_id, status.value if status else None, reason, now)
        if not rows:
            if sets_status:
                await connection.execute(_SET_STATUS, *status_args)
            return []
        columns = [list(column) for column in zip(*outbox_values(rows, now), strict=True)]
        if sets_status:
            written = await connection.fetch(_FINISH, *columns, *status_args)
        else:
            written = await connection.fetch(_ENQUEUE, *columns)
        inserted = {record[0] for record in written}
        again: dict[str, OutboxRow] = {}
        if len(inserted) < len(rows):
            # The same derived event id: announce it again with its original body.
            others = [row.event_id for row in rows if row.event_id not in inserted]
            for record in await connection.fetch(_REQUEUE, others):
                again[record[0]] = outbox_row(record)
        return requeued_in_order(rows, inserted, again)

    async def step_status(
        self, transaction: Transaction, *, step: str, saga_id: str
    ) -> StepStatus | None:
        found = await _connection(transaction).fetchval(_STATUS, step, saga_id)
        return StepStatus(found) if found else None

    async def unsent_of_saga(self, transaction: Transaction, *, saga_id: str) -> list[OutboxRow]:
        records = await _connection(transaction).fetch(_UNSENT_OF_SAGA, saga_id)
        return [outbox_row(record) for record in records]

    async def probe(self, transaction: Transaction, *, now: datetime) -> None:
        await _connection(transaction).execute(_PROBE, now)

    # -- on their own --------------------------------------------------------------------

    async def mark_sent(self, event_ids: Sequence[str], *, now: datetime) -> None:
        if not event_ids:
            return
        pool = await self._connections()
        await pool.execute(_MARK_SENT, now, list(event_ids))

    async def pending(self, *, created_before: datetime | None, limit: int) -> list[OutboxRow]:
        pool = await self._connections()
        # SKIP LOCKED: rows a handler's transaction is writing are not visible yet anyway;
        # rows another replica is marking are left to it.
        if created_before is None:
            query = (
                f"SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE sent_at IS NULL"
                " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED"
            )
            records = await pool.fetch(query, limit)
        else:
            query = (
                f"SELECT {OUTBOX_COLUMNS} FROM {OUTBOX} WHERE sent_at IS NULL"
                " AND created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            )
            records = await pool.fetch(query, created_before, limit)
        return [outbox_row(record) for record in records]

    async def unsent_among(self, event_ids: Sequence[str]) -> list[OutboxRow]:
        if not event_ids:
            return []
        pool = await self._connections()
        records = await pool.fetch(_UNSENT_AMONG, list(event_ids))
        return [outbox_row(record) for record in records]

    async def count_pending(self) -> int:
        pool = await self._connections()
        return int(await pool.fetchval(_COUNT_PENDING))

    async def prune(self, table: str, *, before: datetime, batch_size: int) -> int:
        age = AGE_COLUMN[table]
        # Replicas pruning at once take different rows instead of waiting on each other.
        statement = (
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"
            f" WHERE {age} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
        pool = await self._connections()
        return max(_rowcount(await pool.execute(statement, before, batch_size)), 0)

    async def count_rows(self) -> dict[str, int]:
        pool = await self._connections()
        counts = await pool.fetchrow(_COUNT_ROWS)
        return dict(zip((INBOX, OUTBOX, STEPS), map(int, counts), strict=True))


def _connection(transaction: Transaction) -> Any:
    assert isinstance(transaction, PostgresTransaction)
    return transaction.connection
