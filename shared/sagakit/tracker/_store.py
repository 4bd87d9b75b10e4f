"""The tracker's database: every event it saw (deduplicated by id) and one row per saga.

The events table is the tracker's truth; the sagas table is a summary of it, recomputed by
``summarize`` each time an event of the saga arrives, so that ``saga list`` can filter by
state and find stuck sagas with one query. Nothing here is business data: a lost database
is rebuilt from the participants' outboxes (``rebuild_from_outbox``), as far back as their
retention keeps sent events. Ended sagas are forgotten after ``TRACKER_RETENTION_DAYS``
(``prune``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from sagakit.spec._spec import SagaSpec
from sagakit.store._store import Store, outbox
from sagakit.tracker._model import (
    SagaState,
    SagaView,
    TrackedEvent,
    decode_event,
    stuck_reason,
    summarize,
)

DEFAULT_TRACKER_DATABASE_URL = "sqlite+aiosqlite:///var/tracker.db"

metadata = MetaData()

tracked_events = Table(
    "saga_tracker_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("saga_id", String(36), nullable=False),
    Column("saga_type", String(100), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("producer", String(100), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("deadline", DateTime(timezone=True)),
    Column("reason", String(200)),
    Column("failed_step", String(100)),
    Column("trace_id", String(32)),
    Column("causation_id", String(64)),
    Column("business_key", String(200)),
    Column("body", LargeBinary),
    Column("headers", Text),
    Index("ix_saga_tracker_events_saga", "saga_id", "occurred_at"),
)

tracked_sagas = Table(
    "saga_tracker_sagas",
    metadata,
    Column("saga_id", String(36), primary_key=True),
    Column("saga_type", String(100), nullable=False),
    Column("state", String(20), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_event_type", String(200), nullable=False),
    Column("last_event_at", DateTime(timezone=True), nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("deadline", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("trace_id", String(32)),
    Column("failed_step", String(100)),
    Column("failure_reason", String(200)),
    Column("current_step", String(100)),
    Column("business_key", String(200)),
    # What the console filters and sorts by (console/_queries.py): each filter with the
    # order of the list, so that a page reads the first rows of one index.
    Index("ix_saga_tracker_sagas_state", "state", "last_event_at"),
    Index("ix_saga_tracker_sagas_moved", "last_event_at", "saga_id"),
    # Stuck sagas (the console's filter, the stuck-saga gauge) from the index alone.
    Index("ix_saga_tracker_sagas_stuck", "state", "last_event_at", "saga_id", "deadline"),
    Index("ix_saga_tracker_sagas_started", "started_at"),
    Index("ix_saga_tracker_sagas_step", "current_step", "last_event_at"),
    Index("ix_saga_tracker_sagas_reason", "failure_reason", "last_event_at"),
    Index("ix_saga_tracker_sagas_key", "business_key"),
)

# Columns added after the first release: a tracker database made before them gets them (and
# the indexes) at start-up, empty for the sagas it already holds.
_ADDED_COLUMNS = {
    "saga_tracker_events": ("causation_id", "business_key", "body", "headers"),
    "saga_tracker_sagas": ("current_step", "business_key"),
}


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return _as_utc(value) if value is not None else None


def _stored(value: datetime | None) -> datetime | None:
    # SQLite drops the zone when storing: store UTC so that comparisons stay right.
    return value.astimezone(UTC) if value is not None else None


@dataclass(frozen=True, slots=True)
class SagaRow:
    """One line of ``saga list``: the summary of a saga, without its steps."""

    saga_id: str
    saga_type: str
    state: SagaState
    started_at: datetime
    last_event_type: str
    last_event_at: datetime
    event_count: int
    deadline: datetime | None
    ended_at: datetime | None
    trace_id: str | None
    failed_step: str | None
    failure_reason: str | None
    current_step: str | None = None
    business_key: str | None = None

    def stuck_reason(self, *, now: datetime, stuck_after: timedelta) -> str | None:
        """Why the saga counts as stuck at ``now``, or None."""
        return stuck_reason(
            state=self.state,
            last_event_at=self.last_event_at,
            deadline=self.deadline,
            now=now,
            stuck_after=stuck_after,
        )


class TrackerStore:
    """The tracker's own database (SQLite by default, PostgreSQL by URL).

    Args:
        url: A SQLAlchemy async URL.
        spec: The flow whose events are tracked.
    """

    def __init__(self, url: str, *, spec: SagaSpec) -> None:
        self.spec = spec
        self.store = Store(url)

    async def create_schema(self) -> None:
        """Create the tracker's tables if missing."""
        async with self.store.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_add_missing_columns)

    async def dispose(self) -> None:
        """Close pooled connections."""
        await self.store.dispose()

    # -- writing -----------------------------------------------------------------------

    async def record(
        self, event: TrackedEvent, *, received_at: datetime | None = None
    ) -> SagaView | None:
        """Add ``event`` to its saga and recompute the saga's view; None for a duplicate."""
        async with self.store.transaction() as session:
            await self._lock_saga(session, event)
            inserted = await self.store.insert_if_absent(
                session, tracked_events, _event_row(event, received_at or datetime.now(UTC))
            )
            if not inserted:
                return None
            view = summarize(self.spec, await self._events(session, event.saga_id))
            await session.execute(
                update(tracked_sagas)
                .where(tracked_sagas.c.saga_id == view.saga_id)
                .values(**_summary(view))
            )
            return view

    async def import_sagas(self, sagas: Iterable[Sequence[TrackedEvent]]) -> int:
        """Write whole sagas the store has never seen, each from all its events, in one
        transaction; how many. For loading a store in bulk (a benchmark, a migration): the
        sagas must be new here (a saga id or event id already present is an error)."""
        saga_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        for events in sagas:
            view = summarize(self.spec, events)
            saga_rows.append({"saga_id": view.saga_id, **_summary(view)})
            event_rows.extend(_event_row(event, event.occurred_at) for event in events)
        if saga_rows:
            async with self.store.transaction() as session:
                await session.execute(insert(tracked_sagas), saga_rows)
                await session.execute(insert(tracked_events), event_rows)
        return len(saga_rows)

    async def _lock_saga(self, session: AsyncSession, event: TrackedEvent) -> None:
        # Two events of one saga recorded at once must not both summarise a partial set:
        # the saga's row is locked first (SQLite serialises every write anyway).
        placeholder = {
            "saga_id": event.saga_id,
            "saga_type": event.saga_type,
            "state": SagaState.PENDING.value,
            "started_at": _stored(event.occurred_at),
            "last_event_type": event.event_type,
            "last_event_at": _stored(event.occurred_at),
            "event_count": 0,
        }
        await self.store.insert_if_absent(session, tracked_sagas, placeholder)
        if not self.store.is_sqlite:
            await session.execute(
                select(tracked_sagas.c.saga_id)
                .where(tracked_sagas.c.saga_id == event.saga_id)
                .with_for_update()
            )

    # -- reading -----------------------------------------------------------------------

    async def _events(self, session: AsyncSession, saga_id: str) -> list[TrackedEvent]:
        rows = await session.execute(
            select(tracked_events)
            .where(tracked_events.c.saga_id == saga_id)
            .order_by(tracked_events.c.occurred_at, tracked_events.c.event_id)
        )
        return [_event(r) for r in rows.mappings()]

    async def events(self, saga_id: str) -> list[TrackedEvent]:
        """The saga's events in the order they occurred."""
        async with self.store.read() as session:
            return await self._events(session, saga_id)

    async def view(self, saga_id: str) -> SagaView | None:
        """The saga's full view (steps included), or None if the tracker never saw it."""
        events = await self.events(saga_id)
        return summarize(self.spec, events) if events else None

    async def saga_ids_starting(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of the sagas whose id starts with ``prefix`` (at most ``limit``)."""
        query = (
            select(tracked_sagas.c.saga_id)
            .where(tracked_sagas.c.saga_id.startswith(prefix, autoescape=True))
            .order_by(tracked_sagas.c.saga_id)
            .limit(limit)
        )
        async with self.store.read() as session:
            return [str(saga_id) for (saga_id,) in await session.execute(query)]

    async def sagas(
        self,
        *,
        state: SagaState | None = None,
        stuck_after: timedelta | None = None,
        now: datetime | None = None,
        limit: int = 100,
    ) -> list[SagaRow]:
        """Sagas, most recently moved first; only stuck ones when ``stuck_after`` is given."""
        query = select(tracked_sagas).where(tracked_sagas.c.event_count > 0)
        if state is not None:
            query = query.where(tracked_sagas.c.state == state.value)
        if stuck_after is not None:
            query = query.where(_stuck(now or datetime.now(UTC), stuck_after))
        query = query.order_by(tracked_sagas.c.last_event_at.desc()).limit(limit)
        async with self.store.read() as session:
            return [_saga_row(r) for r in (await session.execute(query)).mappings()]

    async def count_stuck(self, *, stuck_after: timedelta, now: datetime | None = None) -> int:
        """How many sagas are stuck at ``now``."""
        query = (
            select(func.count())
            .select_from(tracked_sagas)
            .where(tracked_sagas.c.event_count > 0, _stuck(now or datetime.now(UTC), stuck_after))
        )
        async with self.store.read() as session:
            return int((await session.execute(query)).scalar_one())

    async def count_by_state(self) -> dict[SagaState, int]:
        """How many sagas are in each state."""
        query = (
            select(tracked_sagas.c.state, func.count())
            .where(tracked_sagas.c.event_count > 0)
            .group_by(tracked_sagas.c.state)
        )
        async with self.store.read() as session:
            found = {SagaState(state): int(n) for state, n in await session.execute(query)}
        return {state: found.get(state, 0) for state in SagaState}

    # -- retention ---------------------------------------------------------------------

    async def prune(
        self,
        *,
        older_than: timedelta,
        now: datetime | None = None,
        batch_size: int = 100,
        pause: float = 0.0,
    ) -> dict[str, int]:
        """Forget sagas that ended with no event for ``older_than``; rows deleted by table.

        A saga that has not ended (pending, compensating, stuck) is kept however old: it is
        what ``saga list --stuck`` is for. Sagas go ``batch_size`` per transaction, their
        events with them, with a pause of ``pause`` seconds between batches.
        """
        cutoff = _stored((now or datetime.now(UTC)) - older_than)
        sagas = tracked_sagas.c
        chosen = (
            select(sagas.saga_id)
            .where(
                sagas.state.in_([SagaState.FULFILLED.value, SagaState.CANCELLED.value]),
                sagas.last_event_at < cutoff,
            )
            .limit(batch_size)
        )
        if not self.store.is_sqlite:
            # An event being recorded for one of them holds its row: skip it this time.
            chosen = chosen.with_for_update(skip_locked=True)
        deleted = {tracked_events.name: 0, tracked_sagas.name: 0}
        while True:
            async with self.store.transaction() as session:
                ended = list((await session.execute(chosen)).scalars())
                if ended:
                    events = await session.execute(
                        delete(tracked_events).where(tracked_events.c.saga_id.in_(ended))
                    )
                    await session.execute(delete(tracked_sagas).where(sagas.saga_id.in_(ended)))
                    deleted[tracked_events.name] += max(int(getattr(events, "rowcount", 0)), 0)
                    deleted[tracked_sagas.name] += len(ended)
            if len(ended) < batch_size:
                return deleted
            await asyncio.sleep(pause)

    async def count_rows(self) -> dict[str, int]:
        """How many rows the tracker's tables hold, by table."""
        counts = {}
        async with self.store.read() as session:
            for table in (tracked_events, tracked_sagas):
                query = select(func.count()).select_from(table)
                counts[table.name] = int((await session.execute(query)).scalar_one())
        return counts

    # -- rebuilding --------------------------------------------------------------------

    async def rebuild_from_outbox(self, source_url: str) -> tuple[int, int]:
        """Record every event in a participant's outbox; (events read, events new here).

        The outboxes keep every event a participant emitted (sent or not) for the
        participant's retention (``<PREFIX>RETENTION_DAYS``), with the trace headers it went
        out with, so together they hold each recent saga's history but the start event,
        which a client published; a saga is then dated from its first step's event.

        Raises:
            FileNotFoundError: ``source_url`` names a SQLite file that does not exist.
        """
        _refuse_missing_sqlite_file(source_url)
        engine = create_async_engine(source_url)
        try:
            async with engine.connect() as conn:
                has_outbox = await conn.run_sync(
                    lambda sync: inspect(sync).has_table("sagakit_outbox")
                )
                if not has_outbox:
                    return 0, 0
                rows = (
                    await conn.execute(
                        select(outbox.c.body, outbox.c.headers).order_by(outbox.c.created_at)
                    )
                ).all()
        finally:
            await engine.dispose()
        new = 0
        for body, headers in rows:
            headers = json.loads(headers) if isinstance(headers, str) else dict(headers or {})
            if await self.record(decode_event(body, headers, spec=self.spec)) is not None:
                new += 1
        return len(rows), new


def _add_missing_columns(conn: Any) -> None:
    inspector = inspect(conn)
    for table in (tracked_events, tracked_sagas):
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for name in _ADDED_COLUMNS[table.name]:
            if name not in present:
                column = table.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")
        indexed = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(conn, checkfirst=True)


def _refuse_missing_sqlite_file(url: str) -> None:
    # Connecting would create an empty database where the participant's should be.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise FileNotFoundError(f"no database at {parsed.database}")


def _stuck(now: datetime, stuck_after: timedelta) -> Any:
    sagas = tracked_sagas.c
    return and_(
        sagas.state.not_in([SagaState.FULFILLED.value, SagaState.CANCELLED.value]),
        or_(
            sagas.last_event_at < _stored(now - stuck_after),
            and_(sagas.deadline.is_not(None), sagas.deadline < _stored(now)),
        ),
    )


def _event_row(event: TrackedEvent, received_at: datetime) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "saga_id": event.saga_id,
        "saga_type": event.saga_type,
        "event_type": event.event_type,
        "producer": event.producer,
        "occurred_at": _stored(event.occurred_at),
        "received_at": _stored(received_at),
        "deadline": _stored(event.deadline),
        "reason": event.reason,
        "failed_step": event.failed_step,
        "trace_id": event.trace_id,
        "causation_id": event.causation_id,
        "business_key": event.business_key,
        "body": event.body,
        "headers": json.dumps(dict(event.headers)) if event.headers else None,
    }


def _summary(view: SagaView) -> dict[str, Any]:
    return {
        "saga_type": view.saga_type,
        "state": view.state.value,
        "started_at": _stored(view.started_at),
        "last_event_type": view.last_event_type,
        "last_event_at": _stored(view.last_event_at),
        "event_count": view.event_count,
        "deadline": _stored(view.deadline),
        "ended_at": _stored(view.ended_at),
        "trace_id": view.trace_id,
        "failed_step": view.failed_step,
        "failure_reason": view.failure_reason,
        "current_step": view.current_step,
        "business_key": view.business_key,
    }


def _event(r: Any) -> TrackedEvent:
    return TrackedEvent(
        event_id=r["event_id"],
        event_type=r["event_type"],
        producer=r["producer"],
        occurred_at=_as_utc(r["occurred_at"]),
        saga_id=r["saga_id"],
        saga_type=r["saga_type"],
        deadline=_utc(r["deadline"]),
        reason=r["reason"],
        failed_step=r["failed_step"],
        trace_id=r["trace_id"],
        causation_id=r["causation_id"],
        business_key=r["business_key"],
        body=r["body"],
        headers=json.loads(r["headers"]) if r["headers"] else {},
    )


def _saga_row(r: Any) -> SagaRow:
    return SagaRow(
        saga_id=r["saga_id"],
        saga_type=r["saga_type"],
        state=SagaState(r["state"]),
        started_at=_as_utc(r["started_at"]),
        last_event_type=r["last_event_type"],
        last_event_at=_as_utc(r["last_event_at"]),
        event_count=int(r["event_count"]),
        deadline=_utc(r["deadline"]),
        ended_at=_utc(r["ended_at"]),
        trace_id=r["trace_id"],
        failed_step=r["failed_step"],
        failure_reason=r["failure_reason"],
        current_step=r["current_step"],
        business_key=r["business_key"],
    )


@contextlib.asynccontextmanager
async def tracker_store(url: str, *, spec: SagaSpec) -> AsyncIterator[TrackerStore]:
    """A TrackerStore with its schema in place, disposed of afterwards."""
    store = TrackerStore(url, spec=spec)
    try:
        await store.create_schema()
        yield store
    finally:
        await store.dispose()
