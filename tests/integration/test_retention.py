"""Bounded stores on SQLite and PostgreSQL: what retention deletes, what it keeps, and a
store that stays the same size under a steady load.

Rows are aged by pruning "as of" a time taken between two groups of writes, so that no
test sleeps for a retention to pass.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sagakit import utc_now
from sagakit.runtime import ParticipantSettings
from sagakit.store import OutboxRow, StepStatus, Store, store_size
from sagakit.store._retention import participant_pruner
from sagakit.store._store import inbox, outbox, saga_steps
from sagakit.tracker import TrackedEvent, TrackerStore
from sqlalchemy import inspect, text

pytestmark = pytest.mark.integration

ZERO = timedelta(0)
# An outbox body the size of a real event (an order with its context, about 1.5 kB).
BODY = '{"payload": "' + "x" * 1500 + '"}'


def _row(saga_id: uuid.UUID, n: int = 0) -> OutboxRow:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{saga_id}/{n}"))
    return OutboxRow(
        event_id=event_id,
        saga_id=str(saga_id),
        routing_key="x.happened",
        body=BODY,
        properties={"message_id": event_id, "correlation_id": str(saga_id)},
        headers={"x-saga-id": str(saga_id)},
    )


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.create_schema()
    yield store
    await store.dispose()


async def _handle(store: Store, *, sent: bool = True, step: str = "s") -> uuid.UUID:
    """What handling one message leaves behind: an inbox record, a step record and an
    outbox row (marked sent in a transaction of its own, as the relay's marks are)."""
    saga = uuid.uuid4()
    async with store.write() as transaction:
        remembered = await store.remember(
            transaction,
            consumer="svc.x.happened",
            message_id=str(uuid.uuid4()),
            saga_id=saga,
            step=step,
        )
        assert (remembered.first, remembered.status) == (True, None)
        [row] = await store.finish(
            transaction, saga_id=saga, step=step, status=StepStatus.COMPLETED, rows=[_row(saga)]
        )
    if sent:
        await store.mark_sent([row.event_id])
    return saga


async def _boundary() -> datetime:
    # Rows written before it are older than it, and rows written after are younger, even
    # on a clock with coarse ticks.
    await asyncio.sleep(0.01)
    moment = utc_now()
    await asyncio.sleep(0.01)
    return moment


async def test_inbox_records_and_sent_rows_past_retention_go_and_nothing_else(
    store: Store,
) -> None:
    old_sent = [await _handle(store) for _ in range(5)]
    old_unsent = [await _handle(store, sent=False) for _ in range(2)]
    cutoff = await _boundary()
    young = [await _handle(store) for _ in range(3)]

    deleted = await store.prune(older_than=ZERO, now=cutoff)

    assert deleted == {inbox.name: 7, outbox.name: 5}
    assert await store.count_rows() == {inbox.name: 3, outbox.name: 5, saga_steps.name: 10}
    pending = await store.pending_outbox()
    async with store.read() as session:
        kept = set(
            (await session.execute(outbox.select().with_only_columns(outbox.c.saga_id))).scalars()
        )
    # an unsent row is never deleted, however old
    assert {r.saga_id for r in pending} == {str(s) for s in old_unsent}
    assert kept == {str(s) for s in (*old_unsent, *young)}
    assert not {str(s) for s in old_sent} & kept
    # a second pass finds nothing more
    assert await store.prune(older_than=ZERO, now=cutoff) == {inbox.name: 0, outbox.name: 0}


async def test_retention_counts_back_from_now(store: Store) -> None:
    for _ in range(3):
        await _handle(store)
    # a week's retention keeps what is minutes old, and deletes it a week later
    assert await store.prune(older_than=timedelta(days=7)) == {inbox.name: 0, outbox.name: 0}
    later = utc_now() + timedelta(days=7, minutes=1)
    assert await store.prune(older_than=timedelta(days=7), now=later) == {
        inbox.name: 3,
        outbox.name: 3,
    }


async def test_rows_go_in_batches_until_none_is_left(store: Store) -> None:
    for _ in range(7):
        await _handle(store)
    cutoff = await _boundary()
    await _handle(store)

    deleted = await store.prune(older_than=ZERO, now=cutoff, batch_size=2)

    assert deleted == {inbox.name: 7, outbox.name: 7}
    assert (await store.count_rows())[inbox.name] == 1


async def test_the_step_log_is_kept_unless_it_has_a_retention_of_its_own(store: Store) -> None:
    done = await _handle(store)
    cutoff = await _boundary()
    recent = await _handle(store)

    await store.prune(older_than=ZERO, now=cutoff)
    async with store.write() as session:
        assert await store.step_status(session, step="s", saga_id=done) is StepStatus.COMPLETED

    deleted = await store.prune(older_than=ZERO, step_log_older_than=ZERO, now=cutoff)

    assert deleted[saga_steps.name] == 1
    async with store.write() as session:
        assert await store.step_status(session, step="s", saga_id=done) is None
        assert await store.step_status(session, step="s", saga_id=recent) is StepStatus.COMPLETED


async def test_a_message_back_after_its_inbox_record_went_is_new_but_its_step_is_done(
    store: Store,
) -> None:
    """What the step log, kept by default, still guards once the inbox has forgotten."""
    saga = uuid.uuid4()
    async with store.write() as transaction:
        first = await store.remember(
            transaction, consumer="q", message_id="m1", saga_id=saga, step="s"
        )
        assert (first.first, first.status) == (True, None)
        await store.finish(transaction, saga_id=saga, step="s", status=StepStatus.COMPLETED)
    cutoff = await _boundary()
    await store.prune(older_than=ZERO, now=cutoff)

    async with store.write() as transaction:
        again = await store.remember(
            transaction, consumer="q", message_id="m1", saga_id=saga, step="s"
        )
        assert (again.first, again.status) == (True, StepStatus.COMPLETED)


async def test_an_event_announced_again_after_its_row_went_is_queued_afresh(store: Store) -> None:
    saga = await _handle(store)
    cutoff = await _boundary()
    await store.prune(older_than=ZERO, now=cutoff)

    async with store.write() as transaction:
        [again] = await store.finish(transaction, saga_id=saga, rows=[_row(saga)])
    assert [r.event_id for r in await store.pending_outbox()] == [again.event_id]


async def test_a_store_made_before_the_retention_indexes_gets_them(store: Store) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text("DROP INDEX ix_sagakit_inbox_processed_at"))
    await store.create_schema()
    async with store.engine.connect() as connection:
        indexes = await connection.run_sync(
            lambda sync: {i["name"] for i in inspect(sync).get_indexes(inbox.name)}
        )
    assert "ix_sagakit_inbox_processed_at" in indexes


async def test_pruning_while_handlers_write_loses_nothing_young(store: Store) -> None:
    for _ in range(60):
        await _handle(store)
    cutoff = await _boundary()

    async def handle_more() -> list[uuid.UUID]:
        return [await _handle(store) for _ in range(40)]

    pruned, written = await asyncio.gather(
        store.prune(older_than=ZERO, now=cutoff, batch_size=7), handle_more()
    )

    assert pruned == {inbox.name: 60, outbox.name: 60}
    assert await store.count_rows() == {inbox.name: 40, outbox.name: 40, saga_steps.name: 100}
    async with store.write() as session:
        for saga in written:
            assert await store.step_status(session, step="s", saga_id=saga) is not None


async def test_the_prune_task_reports_rows_and_passes_as_metrics(store: Store) -> None:
    from prometheus_client import REGISTRY

    service = f"svc-{uuid.uuid4().hex[:6]}"
    settings = ParticipantSettings(
        database_url=store.url, retention_days=1, step_log_retention_days=2
    )
    pruner = participant_pruner(store, settings, service=service)
    for _ in range(4):
        await _handle(store)

    assert await pruner.run_once() == {inbox.name: 0, outbox.name: 0, saga_steps.name: 0}

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"service": service, **labels})

    assert sample("sagakit_store_rows", table=inbox.name) == 4
    assert sample("sagakit_store_rows", table=saga_steps.name) == 4
    assert sample("sagakit_store_pruned_rows_total", table=inbox.name) == 0
    last = sample("sagakit_store_last_prune_timestamp_seconds")
    assert last is not None
    assert last > 0


@pytest.mark.timeout(180)
async def test_the_store_stays_the_same_size_under_a_steady_load(store: Store) -> None:
    """Rounds of handling, each followed by a prune with a retention of ``KEPT`` rounds:
    the rows stay at ``KEPT`` rounds' worth, and on SQLite the pages in use and the file
    stop growing once the first rows are deleted (new rows reuse the freed pages)."""
    per_round, rounds, kept = 150, 12, 3
    starts: list[datetime] = []
    rows: list[dict[str, int]] = []
    sizes: list[tuple[int, int | None]] = []
    for number in range(rounds):
        starts.append(await _boundary())
        for _ in range(per_round):
            await _handle(store)
        if number + 1 >= kept:
            # retention: the last `kept` rounds, the step log included
            cutoff = starts[number + 1 - kept]
            await store.prune(older_than=ZERO, step_log_older_than=ZERO, now=cutoff)
        rows.append(await store.count_rows())
        size = await store_size(store, [inbox.name, outbox.name, saga_steps.name])
        sizes.append((size.file_bytes, size.used_bytes))

    written = per_round * rounds
    for counts in rows[kept - 1 :]:
        assert counts == {
            inbox.name: kept * per_round,
            outbox.name: kept * per_round,
            saga_steps.name: kept * per_round,
        }, f"{written} handled"
    if store.is_sqlite:
        steady_file, steady_used = sizes[kept]
        assert steady_used is not None
        for file_bytes, used_bytes in sizes[kept:]:
            assert used_bytes is not None
            # B-tree pages are not refilled perfectly: a few pages of slack, never a round's
            # worth (a round adds ~0.3 MB of rows).
            assert used_bytes <= steady_used * 1.1, sizes
            assert file_bytes <= steady_file * 1.1, sizes
        # without pruning the file would have grown fourfold
        unpruned_estimate = steady_used / kept * rounds
        assert sizes[-1][0] < unpruned_estimate / 2, sizes


async def test_the_tracker_forgets_sagas_that_ended_long_ago_and_keeps_the_rest(
    store_url: str,
) -> None:
    from order_contracts import ORDER_SAGA

    tracker = TrackerStore(store_url, spec=ORDER_SAGA)
    await tracker.create_schema()
    now = utc_now()
    long_ago, lately = now - timedelta(days=10), now - timedelta(hours=1)
    script_done = ["order.created", "inventory.reserved", "payment.processed",
                   "shipment.created", "order.fulfilled"]  # fmt: skip
    script_failed = ["order.created", "inventory.reservation_failed", "order.cancelled"]

    async def saga(script: list[str], at: datetime) -> str:
        saga_id = str(uuid.uuid4())
        for n, event_type in enumerate(script):
            await tracker.record(
                TrackedEvent(
                    event_id=str(uuid.uuid4()),
                    event_type=event_type,
                    producer="test",
                    occurred_at=at + timedelta(seconds=n),
                    saga_id=saga_id,
                    saga_type=ORDER_SAGA.saga_type,
                    reason="insufficient_stock" if "failed" in event_type else None,
                    failed_step="reserve_stock" if event_type == "order.cancelled" else None,
                )
            )
        return saga_id

    try:
        old_done = await saga(script_done, long_ago)
        old_failed = await saga(script_failed, long_ago)
        old_stuck = await saga(script_done[:2], long_ago)
        recent_done = await saga(script_done, lately)

        deleted = await tracker.prune(older_than=timedelta(days=7), batch_size=1)

        assert deleted == {"saga_tracker_events": 8, "saga_tracker_sagas": 2}
        assert await tracker.view(old_done) is None
        assert await tracker.view(old_failed) is None
        stuck = await tracker.view(old_stuck)
        assert stuck is not None
        assert stuck.event_count == 2
        assert await tracker.view(recent_done) is not None
        assert await tracker.count_rows() == {"saga_tracker_events": 7, "saga_tracker_sagas": 2}
    finally:
        await tracker.dispose()
