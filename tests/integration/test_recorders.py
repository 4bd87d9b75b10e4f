"""One suite for sagakit's records, run against each recorder (SQLite, PostgreSQL).

``RecorderSuite`` says what every backend must do: a delivery recorded once per consumer,
a step claimed once (concurrent claims included), the step's status, the outbox (order,
re-announcement, sent marks in batches), rollback, pruning, the probe, and handlers'
``Prepared`` statements with named rows. Each backend subclasses it with its ``store``
fixture, as eventsourcing's recorder test cases are subclassed per persistence module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from payment_service.tables import Amount  # money: NUMERIC on PostgreSQL, a string on SQLite
from sagakit import utc_now
from sagakit.store import OutboxRow, Prepared, StatementRefused, StepStatus, Store
from sagakit.store._store import inbox, outbox, saga_steps
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)

pytestmark = pytest.mark.integration

metadata = MetaData()
charges = Table(
    "rec_charges",
    metadata,
    Column("saga_id", String(36), primary_key=True),
    Column("amount", Amount, nullable=False),
    Column("status", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("count", Integer, nullable=False),
)
defaulted = Table(
    "rec_defaulted",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("label", String(20), default="fresh"),
)
CHARGE = Prepared(insert(charges))
CHARGED = Prepared(
    select(charges.c.amount, charges.c.status, charges.c.at).where(
        charges.c.saga_id == bindparam("w_saga_id")
    )
)
BUMP = Prepared(
    update(charges)
    .where(charges.c.saga_id == bindparam("w_saga_id"))
    .values(count=charges.c.count + bindparam("w_by"))
)


def _row(event_id: str, body: str = "{}", saga_id: str | None = None) -> OutboxRow:
    return OutboxRow(
        event_id=event_id,
        saga_id=saga_id or str(uuid.uuid4()),
        routing_key="x.happened",
        body=body,
        properties={"message_id": event_id, "headers": {"n": 1}},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )


class RecorderSuite:
    """What every recorder does; subclasses give the ``store`` fixture."""

    async def test_a_delivery_is_first_once_per_consumer(self, store: Store) -> None:
        saga = uuid.uuid4()
        async with store.write() as tx:
            first = await store.remember(tx, consumer="q1", message_id="m1", saga_id=saga)
            again = await store.remember(tx, consumer="q1", message_id="m1", saga_id=saga)
            other = await store.remember(tx, consumer="q2", message_id="m1", saga_id=saga)
        assert (first.first, again.first, other.first) == (True, False, True)
        async with store.write() as tx:
            repeat = await store.remember(tx, consumer="q1", message_id="m1", saga_id=saga)
        assert not repeat.first

    async def test_a_repeat_brings_back_the_digest_recorded_first(self, store: Store) -> None:
        saga = uuid.uuid4()
        async with store.write() as tx:
            await store.remember(tx, consumer="q", message_id="m", saga_id=saga, body_digest="d1")
        async with store.write() as tx:
            again = await store.remember(
                tx, consumer="q", message_id="m", saga_id=saga, body_digest="d2", step="s"
            )
        assert (again.first, again.digest) == (False, "d1")
        async with store.write() as tx:  # the repeat claimed nothing
            assert await store.step_status(tx, step="s", saga_id=saga) is None

    async def test_the_first_delivery_claims_its_step_once(self, store: Store) -> None:
        saga = uuid.uuid4()
        async with store.write() as tx:
            claimed = await store.remember(
                tx, consumer="q", message_id="m1", saga_id=saga, step="s"
            )
            assert claimed.status is None
            assert await store.step_status(tx, step="s", saga_id=saga) is StepStatus.RUNNING
            await store.finish(tx, saga_id=saga, step="s", status=StepStatus.COMPLETED)
        async with store.write() as tx:  # another message for the same step and saga
            later = await store.remember(tx, consumer="q", message_id="m2", saga_id=saga, step="s")
        assert (later.first, later.status) == (True, StepStatus.COMPLETED)

    async def test_concurrent_claims_for_one_saga_have_one_winner(self, store: Store) -> None:
        saga = uuid.uuid4()
        results: list[StepStatus | None] = []

        async def claim_and_complete(message_id: str) -> None:
            async with store.write() as tx:
                found = await store.remember(
                    tx, consumer="q", message_id=message_id, saga_id=saga, step="s"
                )
                results.append(found.status)
                if found.status is None:
                    await asyncio.sleep(0.05)  # hold the claim while the other one waits
                    await store.finish(tx, saga_id=saga, step="s", status=StepStatus.COMPLETED)

        await asyncio.gather(claim_and_complete("m1"), claim_and_complete("m2"))
        assert sorted(results, key=str) == sorted([None, StepStatus.COMPLETED], key=str)

    async def test_a_rolled_back_transaction_leaves_no_trace(self, store: Store) -> None:
        saga = uuid.uuid4()

        async def crash_mid_transaction() -> None:
            async with store.write() as tx:
                await store.remember(tx, consumer="q", message_id="m", saga_id=saga, step="s")
                await tx.execute(CHARGE, _charge(saga))
                await store.finish(
                    tx, saga_id=saga, step="s", status=StepStatus.COMPLETED, rows=[_row("e1")]
                )
                raise RuntimeError("handler crashed")

        with pytest.raises(RuntimeError, match="handler crashed"):
            await crash_mid_transaction()
        async with store.write() as tx:
            again = await store.remember(tx, consumer="q", message_id="m", saga_id=saga, step="s")
            assert (again.first, again.status) == (True, None)
            assert (await tx.execute(CHARGED, {"w_saga_id": str(saga)})).first() is None
        assert await store.pending_outbox() == []

    async def test_the_status_is_set_with_a_reason(self, store: Store) -> None:
        saga = uuid.uuid4()
        async with store.write() as tx:
            await store.remember(tx, consumer="q", message_id="m", saga_id=saga, step="s")
            await store.finish(
                tx, saga_id=saga, step="s", status=StepStatus.FAILED, reason="card_declined"
            )
        async with store.read() as session:
            row = (await session.execute(select(saga_steps))).mappings().one()
        assert (row["status"], row["reason"]) == ("failed", "card_declined")

    async def test_outbox_rows_wait_until_marked_sent(self, store: Store) -> None:
        async with store.write() as tx:
            queued = await store.finish(tx, saga_id="s", rows=[_row("e1", '{"n": 1}'), _row("e2")])
        assert queued == [_row("e1", '{"n": 1}', queued[0].saga_id), queued[1]]
        pending = await store.pending_outbox()
        assert [r.event_id for r in pending] == ["e1", "e2"]
        assert pending[0].body == '{"n": 1}'
        assert pending[0].properties == {"message_id": "e1", "headers": {"n": 1}}
        assert pending[0].headers["traceparent"].startswith("00-")
        assert await store.count_pending_outbox() == 2
        await store.mark_sent(["e1"])
        assert [r.event_id for r in await store.pending_outbox()] == ["e2"]
        assert [r.event_id for r in await store.unsent_among(["e1", "e2", "nope"])] == ["e2"]

    async def test_many_sent_marks_go_in_one_call(self, store: Store) -> None:
        ids = [f"e{n}" for n in range(1200)]
        async with store.write() as tx:
            await store.finish(tx, saga_id="s", rows=[_row(i) for i in ids])
        await store.mark_sent(ids[:1100])
        assert await store.count_pending_outbox() == 100
        async with store.read() as session:
            attempts = (await session.execute(select(func.sum(outbox.c.attempts)))).scalar_one()
        assert attempts == 1100

    async def test_announcing_an_event_again_keeps_its_original_body(self, store: Store) -> None:
        saga = str(uuid.uuid4())
        async with store.write() as tx:
            await store.finish(tx, saga_id=saga, rows=[_row("e1", '{"first": true}', saga)])
        await store.mark_sent(["e1"])
        async with store.write() as tx:
            [again, fresh] = await store.finish(
                tx,
                saga_id=saga,
                step="s",
                status=StepStatus.COMPENSATED,
                rows=[_row("e1", '{"second": true}', saga), _row("e2", "{}", saga)],
            )
            assert await store.step_status(tx, step="s", saga_id=saga) is StepStatus.COMPENSATED
        assert (again.event_id, again.body, fresh.event_id) == ("e1", '{"first": true}', "e2")
        assert [r.body for r in await store.pending_outbox()] == ['{"first": true}', "{}"]

    async def test_rows_written_together_are_published_in_the_order_written(
        self, store: Store
    ) -> None:
        ids = [f"e{n}" for n in range(20)]
        saga = str(uuid.uuid4())
        async with store.write() as tx:
            await store.finish(tx, saga_id=saga, rows=[_row(i, saga_id=saga) for i in ids])
        assert [r.event_id for r in await store.pending_outbox()] == ids
        async with store.write() as tx:
            assert [r.event_id for r in await store.unsent_of_saga(tx, saga_id=saga)] == ids
        assert [r.event_id for r in await store.unsent_among(ids[::-1])] == ids

    async def test_only_rows_older_than_asked_are_pending(self, store: Store) -> None:
        async with store.write() as tx:
            await store.finish(tx, saga_id="s", rows=[_row("e1")])
        assert await store.pending_outbox(older_than=timedelta(minutes=1)) == []
        assert len(await store.pending_outbox(older_than=timedelta(0))) == 1

    async def test_prune_deletes_only_what_retention_no_longer_keeps(self, store: Store) -> None:
        saga = uuid.uuid4()
        async with store.write() as tx:
            for n in range(5):
                await store.remember(tx, consumer="q", message_id=f"m{n}", saga_id=saga, step="s")
            await store.finish(tx, saga_id=saga, rows=[_row(f"e{n}") for n in range(5)])
        await store.mark_sent(["e0", "e1", "e2"])
        cutoff = utc_now() + timedelta(seconds=1)
        deleted = await store.prune(older_than=timedelta(0), now=cutoff, batch_size=2)
        assert deleted == {inbox.name: 5, outbox.name: 3}
        assert await store.count_rows() == {inbox.name: 0, outbox.name: 2, saga_steps.name: 1}
        deleted = await store.prune(
            older_than=timedelta(0), step_log_older_than=timedelta(0), now=cutoff
        )
        assert deleted[saga_steps.name] == 1

    async def test_the_probe_writes(self, store: Store) -> None:
        await store.probe()
        await store.probe()
        async with store.read() as session:
            assert (await session.execute(select(func.count()).select_from(_probe()))).scalar() == 1

    async def test_prepared_statements_return_named_rows(self, store: Store) -> None:
        saga = str(uuid.uuid4())
        async with store.write() as tx:
            await tx.execute(CHARGE, _charge(saga))
            bumped = await tx.execute(BUMP, {"w_saga_id": saga, "w_by": 2})
            assert bumped.rowcount == 1
        async with store.write() as tx:
            charge = (await tx.execute(CHARGED, {"w_saga_id": saga})).one()
        assert charge.amount == Decimal("12.30")
        assert isinstance(charge.amount, Decimal)
        assert charge.status == charge[1] == "captured"
        assert charge.at.replace(tzinfo=None) == _charge(saga)["at"].replace(tzinfo=None)
        async with store.read() as session:  # what SQLAlchemy reads is what was written
            row = (await session.execute(select(charges))).mappings().one()
        assert (row["amount"], row["count"]) == (Decimal("12.30"), 3)

    async def test_a_duplicate_key_raises_the_drivers_error_and_rolls_back(
        self, store: Store
    ) -> None:
        saga = str(uuid.uuid4())

        async def charge_twice() -> None:
            async with store.write() as tx:
                await store.remember(tx, consumer="q", message_id="m", saga_id=saga)
                await tx.execute(CHARGE, _charge(saga))
                await tx.execute(CHARGE, _charge(saga))

        with pytest.raises(Exception, match=r"(?i)unique|duplicate") as raised:
            await charge_twice()
        assert type(raised.value).__module__.split(".")[0] in {"sqlite3", "asyncpg"}
        async with store.write() as tx:
            assert (await store.remember(tx, consumer="q", message_id="m", saga_id=saga)).first

    async def test_a_missing_parameter_is_a_key_error(self, store: Store) -> None:
        with pytest.raises(KeyError, match="w_saga_id"):
            async with store.write() as tx:
                await tx.execute(CHARGED, {})

    async def test_a_statement_the_driver_cannot_run_is_refused_at_start_up(
        self, store: Store
    ) -> None:
        with pytest.raises(StatementRefused, match="Python-side default"):
            await store.prepare([Prepared(insert(defaulted), at_start_up=False)])
        expanding = select(charges.c.status).where(
            charges.c.saga_id.in_(bindparam("ids", expanding=True))
        )
        with pytest.raises(StatementRefused, match="expanding"):
            await store.prepare([Prepared(expanding, at_start_up=False)])

    async def test_replicas_creating_the_schema_at_once_do_not_collide(self, store: Store) -> None:
        stores = [Store(store.url, metadata=[metadata]) for _ in range(4)]
        try:
            await asyncio.gather(*(s.create_schema() for s in stores))
            assert await stores[0].count_pending_outbox() == 0
        finally:
            await asyncio.gather(*(s.dispose() for s in stores))


def _charge(saga: uuid.UUID | str) -> dict[str, Any]:
    return {
        "saga_id": str(saga),
        "amount": Decimal("12.30"),
        "status": "captured",
        "at": utc_now().replace(microsecond=123456),
        "count": 1,
    }


def _probe() -> Table:
    from sagakit.store._store import probe

    return probe


async def _store(url: str) -> AsyncIterator[Store]:
    store = Store(url, metadata=[metadata])
    await store.create_schema()
    try:
        yield store
    finally:
        await store.dispose()


class TestSQLiteRecorder(RecorderSuite):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        async for store in _store(f"sqlite+aiosqlite:///{tmp_path}/store.db"):
            yield store

    async def test_checkpoints_run_off_the_writer(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The writer's commits never copy the WAL into the file (a checkpoint's fsyncs
        would block the loop); a worker thread does, soon after a commit."""
        from sagakit.store import _sqlite

        monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY_SECONDS", 0.0)
        recorder = store.recorder
        database = tmp_path / "store.db"
        before = database.stat().st_size
        async with recorder.transaction() as transaction:
            assert isinstance(transaction, _sqlite.SQLiteTransaction)
            writer = transaction.connection
            assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            writer.execute("CREATE TABLE rec_blobs (data BLOB)")
            writer.execute("INSERT INTO rec_blobs VALUES (zeroblob(200000))")
        # Well under SQLite's own 1000-page checkpoint: only the worker's copies it.
        for _ in range(100):
            if database.stat().st_size >= before + 200000:
                break
            await asyncio.sleep(0.05)
        assert database.stat().st_size >= before + 200000


class TestPostgresRecorder(RecorderSuite):
    @pytest.fixture
    async def store(self, postgres_database: Callable[[], str]) -> AsyncIterator[Store]:
        async for store in _store(postgres_database()):
            yield store
