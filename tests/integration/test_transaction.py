"""Store.write's Transaction on SQLite and PostgreSQL: the driver path reads and writes what
SQLAlchemy does, mixes with the ORM and with SQLAlchemy's own path, and rolls back whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from payment_service.tables import Amount  # money: NUMERIC on PostgreSQL, a string on SQLite
from sagakit.store import Store, Transaction
from sagakit.store import _sql as sql_module
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    Interval,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    exc,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

pytestmark = pytest.mark.integration


metadata = MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class Note(Base):
    __tablename__ = "tx_notes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(100))


things = Table(
    "tx_things",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(50), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("count", Integer, nullable=False),
)
defaulted = Table(
    "tx_defaulted",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("label", String(20), nullable=False, default="fresh"),
)
durations = Table(
    "tx_durations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("length", Interval, nullable=False),
)
notes = metadata.tables[Note.__tablename__]

OPEN = select(literal(1))  # on PostgreSQL the first statement goes through SQLAlchemy
INSERT_THING = insert(things)
ALL_THINGS = select(things).order_by(things.c.id)
THING_BY_ID = select(things).where(things.c.id == bindparam("w_id"))
# No Numeric column: runs on the driver on PostgreSQL too (asyncpg's Numeric result processor
# needs the column type the database reports, so selects of one go through SQLAlchemy there).
NAME_BY_ID = select(things.c.id, things.c.name).where(things.c.id == bindparam("w_id"))
NO_AMOUNTS = select(things.c.id, things.c.name, things.c.data, things.c.at, things.c.count)
THINGS_IN = (
    select(things).where(things.c.id.in_(bindparam("w_ids", expanding=True))).order_by(things.c.id)
)
RENAME_BY_COUNT = (
    update(things).where(things.c.count == bindparam("w_count")).values(name=bindparam("to"))
)
ALL_NOTES = select(notes.c.id, notes.c.text).order_by(notes.c.id)
ALL_DEFAULTED = select(defaulted.c.id, defaulted.c.label).order_by(defaulted.c.id)

AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
THINGS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": "first",
        "amount": Decimal("12.34"),
        "data": {"sku": "A-1", "lines": [1, 2.5, None], "nested": {"ok": True}},
        "at": AT,
        "count": 1,
    },
    {
        "id": 2,
        "name": "second",
        "amount": Decimal("0.10"),
        "data": {"unicode": "déjà vu", "empty": []},
        "at": AT + timedelta(days=400, microseconds=1),
        "count": 2,
    },
    {
        "id": 3,
        "name": "third",
        "amount": Decimal("9999999999.99"),
        "data": {},
        "at": AT - timedelta(hours=5),
        "count": 2,
    },
]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url, metadata=[metadata])
    await store.create_schema()
    yield store
    await store.dispose()


@pytest.fixture
def through_sqlalchemy(store: Store) -> Iterator[list[str]]:
    """The SQL of every statement SQLAlchemy's execution layer runs (the driver path's don't)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine.sync_engine, "before_cursor_execute", record)


def _as_stored(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    # SQLite keeps no time zone: SQLAlchemy gives the UTC wall clock back, naive.
    return {**row, "at": row["at"].replace(tzinfo=None)} if store.is_sqlite else row


async def _insert_things(tx: Transaction) -> None:
    await tx.execute(OPEN)
    for row in THINGS:
        await tx.execute(INSERT_THING, row)


async def _read_things(store: Store) -> list[tuple[Any, ...]]:
    async with store.read() as session:
        return [tuple(row) for row in (await session.execute(ALL_THINGS)).all()]


async def _count(store: Store, table: Table) -> int:
    async with store.read() as session:
        return len((await session.execute(select(table))).all())


async def test_driver_path_writes_read_back_identically_through_sqlalchemy(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
    assert not [sql for sql in through_sqlalchemy if sql.startswith("INSERT")]
    async with store.read() as session:
        read = [dict(row) for row in (await session.execute(ALL_THINGS)).mappings().all()]
    assert read == [_as_stored(store, row) for row in THINGS]
    assert all(type(row["amount"]) is Decimal for row in read)
    assert [str(row["amount"]) for row in read] == ["12.34", "0.10", "9999999999.99"]
    assert all(type(row["data"]) is dict for row in read)


async def test_sqlalchemy_writes_read_back_identically_through_the_driver_path(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.transaction() as session:
        await session.execute(INSERT_THING, THINGS)
    expected = await _read_things(store)
    through_sqlalchemy.clear()
    async with store.write() as tx:
        await tx.execute(OPEN)
        everything = await tx.execute(ALL_THINGS)
        second = await tx.execute(THING_BY_ID, {"w_id": 2})
        without_amounts = await tx.execute(NO_AMOUNTS.order_by(things.c.id))
    # PostgreSQL: OPEN, and the two selects of the Numeric column
    assert len(through_sqlalchemy) == (0 if store.is_sqlite else 3)
    assert without_amounts.all() == [(r[0], r[1], r[3], r[4], r[5]) for r in expected]
    assert everything.all() == expected
    assert [type(value) for value in everything.all()[0]] == [type(v) for v in expected[0]]
    assert everything.keys() == ("id", "name", "amount", "data", "at", "count")
    assert second.mappings().one() == _as_stored(store, THINGS[1])


async def test_update_rowcount_counts_the_matched_rows(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 7, "to": "none"})).rowcount == 0
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 1, "to": "one"})).rowcount == 1
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 2, "to": "two"})).rowcount == 2
    assert not [sql for sql in through_sqlalchemy if sql.startswith("UPDATE")]
    assert [row[1] for row in await _read_things(store)] == ["one", "two", "two"]


async def test_an_exception_rolls_back_driver_and_orm_writes(store: Store) -> None:
    async def crash_mid_transaction() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(RENAME_BY_COUNT, {"w_count": 1, "to": "renamed"})
            tx.session.add(Note(id=1, text="flushed"))
            await tx.session.flush()
            tx.session.add(Note(id=2, text="pending"))
            assert len((await tx.execute(ALL_NOTES)).all()) == 2
            raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await crash_mid_transaction()
    assert await _read_things(store) == []
    assert await _count(store, notes) == 0


async def test_a_rolled_back_transaction_leaves_the_next_one_clean(store: Store) -> None:
    async def crash_mid_transaction() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await crash_mid_transaction()
    async with store.write() as tx:
        await _insert_things(tx)  # the same keys again: nothing was left behind
    assert len(await _read_things(store)) == len(THINGS)


async def test_orm_objects_are_flushed_before_a_core_statement(store: Store) -> None:
    async with store.write() as tx:
        await tx.execute(OPEN)
        tx.session.add(Note(id=1, text="from the orm"))
        assert (await tx.execute(ALL_NOTES)).all() == [(1, "from the orm")]
        await tx.execute(insert(notes), {"id": 2, "text": "from core"})
        assert (await tx.session.get(Note, 2)) is not None
        note = await tx.session.get(Note, 1)
        assert note is not None
        note.text = "changed by the orm"
        assert (await tx.execute(ALL_NOTES)).all() == [(1, "changed by the orm"), (2, "from core")]
        await tx.execute(INSERT_THING, THINGS[0])
        tx.session.add(Note(id=3, text="flushed at commit"))
    async with store.read() as session:
        assert (await session.execute(ALL_NOTES)).all() == [
            (1, "changed by the orm"),
            (2, "from core"),
            (3, "flushed at commit"),
        ]
    assert [row[0] for row in await _read_things(store)] == [1]


async def test_an_orm_delete_is_flushed_before_a_core_statement(store: Store) -> None:
    async with store.write() as tx:
        await tx.execute(insert(notes), {"id": 1, "text": "doomed"})
    async with store.write() as tx:
        await tx.execute(OPEN)
        note = await tx.session.get(Note, 1)
        assert note is not None
        await tx.session.delete(note)
        assert (await tx.execute(ALL_NOTES)).all() == []


async def test_the_fallback_path_runs_in_the_same_transaction(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
        one_by_one = [(await tx.execute(THING_BY_ID, {"w_id": i})).one() for i in (1, 3)]
        through_sqlalchemy.clear()
        expanded = await tx.execute(THINGS_IN, {"w_ids": [1, 3]})
        await tx.execute(insert(defaulted), {"id": 1})
        await tx.execute(insert(defaulted), {"id": 2, "label": "given"})
        assert len(through_sqlalchemy) == 2  # the IN and the insert that needs the default
        assert expanded.all() == one_by_one
        assert expanded.keys() == ("id", "name", "amount", "data", "at", "count")
        assert (await tx.execute(ALL_DEFAULTED)).all() == [(1, "fresh"), (2, "given")]
    async with store.read() as session:
        assert (await session.execute(ALL_DEFAULTED)).all() == [(1, "fresh"), (2, "given")]
    assert [row[0] for row in await _read_things(store)] == [1, 2, 3]


async def test_fallback_writes_roll_back_with_the_transaction(store: Store) -> None:
    async def crash_mid_transaction() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(insert(defaulted), {"id": 1})
            raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await crash_mid_transaction()
    assert await _count(store, defaulted) == 0
    assert await _read_things(store) == []


async def test_a_missing_parameter_is_a_key_error_and_rolls_back(store: Store) -> None:
    async def forget_the_parameter() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(NAME_BY_ID, {})

    with pytest.raises(KeyError, match="w_id"):
        await forget_the_parameter()
    assert await _read_things(store) == []
    async with store.write() as tx:  # the cached compilation still takes the parameter
        await _insert_things(tx)
        assert (await tx.execute(NAME_BY_ID, {"w_id": 3})).one()[1] == "third"


async def test_a_duplicate_key_raises_sqlalchemys_integrity_error(store: Store) -> None:
    async def insert_twice() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(INSERT_THING, THINGS[0])

    with pytest.raises(exc.IntegrityError):
        await insert_twice()


async def test_an_interval_round_trips_through_the_driver_path(
    store: Store,
) -> None:
    length = timedelta(days=2, seconds=90, microseconds=5)
    async with store.write() as tx:
        await tx.execute(OPEN)
        await tx.execute(insert(durations), {"id": 1, "length": length})
        assert (await tx.execute(select(durations.c.length))).scalars() == [length]
    async with store.read() as session:
        assert (await session.execute(select(durations.c.length))).scalars().all() == [length]


async def test_statements_built_per_call_stop_filling_the_cache_and_still_run(
    store: Store, through_sqlalchemy: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with store.write() as tx:
        await tx.execute(OPEN)
        await _insert_things(tx)
    room = 3  # for three more statements
    monkeypatch.setattr(sql_module, "COMPILED_CACHE_SIZE", len(store._compiled) + room)
    through_sqlalchemy.clear()
    async with store.write() as tx:
        await tx.execute(OPEN)
        names = [
            (await tx.execute(select(things.c.name).where(things.c.id == id_))).scalar_one_or_none()
            for id_ in (1, 2, 3, 1)
        ]
    assert names == ["first", "second", "third", "first"]
    assert len(store._compiled) == sql_module.COMPILED_CACHE_SIZE  # the fourth was not kept
    # the statement that found the cache full went through SQLAlchemy, the others did not
    assert len(through_sqlalchemy) == (1 if store.is_sqlite else 2)
