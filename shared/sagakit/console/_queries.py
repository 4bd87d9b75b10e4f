"""The console's reads of the tracker's store: one page of sagas, filtered, and its counts.

Every filter is an indexed column of ``saga_tracker_sagas`` (tracker/_store.py), and a page
is the next ``limit`` rows after a cursor in the list's order (last event first, then saga
id), never an offset: page 1,000 costs what page 1 costs. A search text is a saga id prefix
(a range on the primary key) or a business key (its own index).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, union_all

from sagakit.tracker._model import SagaState
from sagakit.tracker._store import SagaRow, TrackerStore, _saga_row, _stored, tracked_sagas

_RUNNING = tuple(state.value for state in SagaState if not state.ended)
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class SagaFilter:
    """What the saga list shows: every given filter must match.

    Attributes:
        search: A saga id prefix, or a business key (the order id), exactly.
        min_age: Only sagas started at least this long ago.
        max_age: Only sagas started at most this long ago.
        after: The cursor: the ``(last_event_at, saga_id)`` of the previous page's last row.
    """

    state: SagaState | None = None
    stuck: bool = False
    step: str | None = None
    reason: str | None = None
    search: str | None = None
    min_age: timedelta | None = None
    max_age: timedelta | None = None
    after: tuple[datetime, str] | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class SagaPage:
    """One page of the list, how many sagas match in all, and what the queries took."""

    rows: list[SagaRow]
    total: int
    next_cursor: tuple[datetime, str] | None
    query_ms: float
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    facets_ms: float = 0.0


def _conditions(query: SagaFilter, *, now: datetime, stuck_after: timedelta) -> list[Any]:
    sagas = tracked_sagas.c
    # No ``event_count > 0``: a saga's row is written with its first event, in one
    # transaction, so readers never see it empty, and the condition would make every count
    # read the table instead of an index.
    conditions: list[Any] = []
    if query.state is not None:
        conditions.append(sagas.state == query.state.value)
    if query.stuck:
        conditions.append(
            and_(
                # The states that have not ended, by name: each one a range of the state
                # index, where ``NOT IN`` the ended ones would read every row.
                sagas.state.in_(_RUNNING),
                or_(
                    sagas.last_event_at < _stored(now - stuck_after),
                    and_(sagas.deadline.is_not(None), sagas.deadline < _stored(now)),
                ),
            )
        )
    if query.step:
        conditions.append(sagas.current_step == query.step)
    if query.reason:
        conditions.append(sagas.failure_reason == query.reason)
    if query.min_age is not None:
        conditions.append(sagas.started_at <= _stored(now - query.min_age))
    if query.max_age is not None:
        conditions.append(sagas.started_at >= _stored(now - query.max_age))
    text = (query.search or "").strip()
    if text:
        # A prefix as a range: LIKE would not use the primary key on SQLite (it is case
        # insensitive there) and would take ``%`` and ``_`` as wildcards.
        prefix = text.lower()
        conditions.append(
            or_(
                and_(sagas.saga_id >= prefix, sagas.saga_id < prefix + "\uffff"),
                sagas.business_key == text,
            )
        )
    return conditions


async def saga_page(
    store: TrackerStore,
    query: SagaFilter,
    *,
    stuck_after: timedelta,
    now: datetime | None = None,
    facets: bool = True,
) -> SagaPage:
    """One page of sagas matching ``query``, most recently moved first."""
    began = time.perf_counter()
    now = now or datetime.now(UTC)
    sagas = tracked_sagas.c
    conditions = _conditions(query, now=now, stuck_after=stuck_after)
    limit = max(1, min(query.limit, MAX_PAGE))
    listed = select(tracked_sagas).where(*conditions)
    if query.after is not None:
        moved, saga_id = query.after
        listed = listed.where(
            # The plain range lets the index start at the cursor; the rest breaks ties.
            sagas.last_event_at <= _stored(moved),
            or_(
                sagas.last_event_at < _stored(moved),
                and_(sagas.last_event_at == _stored(moved), sagas.saga_id < saga_id),
            ),
        )
    listed = listed.order_by(sagas.last_event_at.desc(), sagas.saga_id.desc()).limit(limit + 1)
    if query.stuck and query.state is None:
        # Stuck sagas newest first: per running state, the first rows of the stuck index in
        # order, then merged; one query over every running state would sort them all.
        parts = [listed.where(sagas.state == state).subquery() for state in _RUNNING]
        merged = union_all(*(select(part) for part in parts)).subquery()
        listed = (
            select(merged)
            .order_by(merged.c.last_event_at.desc(), merged.c.saga_id.desc())
            .limit(limit + 1)
        )
    counted = select(func.count()).select_from(tracked_sagas).where(*conditions)
    found: dict[str, dict[str, int]] = {}
    async with store.store.read() as session:
        rows = [_saga_row(r) for r in (await session.execute(listed)).mappings()]
        total = int((await session.execute(counted)).scalar_one())
        if facets:
            facets_began = time.perf_counter()
            for name, column in (("reason", sagas.failure_reason), ("step", sagas.current_step)):
                grouped = select(column, func.count()).where(column.is_not(None)).group_by(column)
                found[name] = {
                    str(value): int(n) for value, n in (await session.execute(grouped)).all()
                }
            facets_ms = (time.perf_counter() - facets_began) * 1000
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = (rows[-1].last_event_at, rows[-1].saga_id) if more and rows else None
    elapsed = (time.perf_counter() - began) * 1000
    return SagaPage(
        rows=rows,
        total=total,
        next_cursor=cursor,
        query_ms=elapsed,
        facets=found,
        facets_ms=facets_ms if facets else 0.0,
    )


def encode_cursor(cursor: tuple[datetime, str]) -> str:
    """A cursor as it goes into a link."""
    return f"{cursor[0].astimezone(UTC).isoformat()}~{cursor[1]}"


def decode_cursor(text: str | None) -> tuple[datetime, str] | None:
    """A cursor from a link; None for a missing or malformed one (the first page)."""
    if not text or "~" not in text:
        return None
    moment, _, saga_id = text.partition("~")
    try:
        at = datetime.fromisoformat(moment)
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)), saga_id
