"""Store.write's Transaction on SQLite and PostgreSQL: handlers' Prepared statements run on
the driver, read and write what SQLAlchemy does (JSON, NUMERIC, times, intervals), never go
through SQLAlchemy's execution layer, and roll back whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from payment_service.tables import Amount  # money: NUMERIC on PostgreSQL, a string on SQLite
from sagakit.store import Prepared, StatementRefused, Store, Transaction
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
    insert,
    literal,
    select,
    update,
)

pytestmark = pytest.mark.integration


metadata = MetaData()


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
OPEN = Prepared(select(literal(1)))
INSERT_THING = Prepared(insert(things))
ALL_THINGS = Prepared(select(things).order_by(things.c.id))
THING_BY_ID = Prepared(select(things).where(things.c.id == bindparam("w_id")))
NAME_BY_ID = Prepared(select(things.c.id, things.c.name).where(things.c.id == bindparam("w_id")))
NO_AMOUNTS = Prepared(
    select(things.c.id, things.c.name, things.c.data, things.c.at, things.c.count).order_by(
        things.c.id
    )
)
RENAME_BY_COUNT = Prepared(
    update(things).where(things.c.count == bindparam("w_count")).values(name=bindparam("to"))
)
INSERT_DURATION = Prepared(insert(durations))
DURATIONS = Prepared(select(durations.c.length))

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
    """The SQL of every statement SQLAlchemy's execution layer runs (the driver's don't)."""
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
        query = select(things).order_by(things.c.id)
        return [tuple(row) for row in (await session.execute(query)).all()]


async def _count(store: Store, table: Table) -> int:
    async with store.read() as session:
        return len((await session.execute(select(table))).all())


async def test_driver_writes_read_back_identically_through_sqlalchemy(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
    assert through_sqlalchemy == []
    async with store.read() as session:
        query = select(things).order_by(things.c.id)
        read = [dict(row) for row in (await session.execute(query)).mappings().all()]
    assert read == [_as_stored(store, row) for row in THINGS]
    assert all(type(row["amount"]) is Decimal for row in read)
    assert [str(row["amount"]) for row in read] == ["12.34", "0.10", "9999999999.99"]
    assert all(type(row["data"]) is dict for row in read)


async def test_sqlalchemy_writes_read_back_identically_through_the_driver(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.transaction() as session:
        await session.execute(insert(things), THINGS)
    expected = await _read_things(store)
    through_sqlalchemy.clear()
    async with store.write() as tx:
        everything = await tx.execute(ALL_THINGS)
        second = await tx.execute(THING_BY_ID, {"w_id": 2})
        without_amounts = await tx.execute(NO_AMOUNTS)
    assert through_sqlalchemy == []  # NUMERIC included: its type is asked of the server once
    assert without_amounts.all() == [(r[0], r[1], r[3], r[4], r[5]) for r in expected]
    assert everything.all() == expected
    assert [type(value) for value in everything.all()[0]] == [type(v) for v in expected[0]]
    assert everything.keys() == ("id", "name", "amount", "data", "at", "count")
    assert everything.all()[0].amount == expected[0][2]
    assert second.mappings().one() == _as_stored(store, THINGS[1])


async def test_update_rowcount_counts_the_matched_rows(store: Store) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 7, "to": "none"})).rowcount == 0
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 1, "to": "one"})).rowcount == 1
        assert (await tx.execute(RENAME_BY_COUNT, {"w_count": 2, "to": "two"})).rowcount == 2
    assert [row[1] for row in await _read_things(store)] == ["one", "two", "two"]


async def test_an_exception_rolls_back_every_write(store: Store) -> None:
    async def crash_mid_transaction() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(RENAME_BY_COUNT, {"w_count": 1, "to": "renamed"})
            assert len((await tx.execute(ALL_THINGS)).all()) == len(THINGS)
            raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await crash_mid_transaction()
    assert await _read_things(store) == []


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


async def test_a_cancelled_handler_rolls_back_and_the_connection_serves_the_next(
    store: Store,
) -> None:
    async def slow() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await slow()
    async with store.write() as tx:
        await _insert_things(tx)
    assert len(await _read_things(store)) == len(THINGS)


async def test_a_missing_parameter_is_a_key_error_and_rolls_back(store: Store) -> None:
    async def forget_the_parameter() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(NAME_BY_ID, {})

    with pytest.raises(KeyError, match="w_id"):
        await forget_the_parameter()
    assert await _read_things(store) == []
    async with store.write() as tx:  # the compiled statement still takes the parameter
        await _insert_things(tx)
        assert (await tx.execute(NAME_BY_ID, {"w_id": 3})).one().name == "third"


async def test_a_duplicate_key_raises_the_drivers_integrity_error(store: Store) -> None:
    async def insert_twice() -> None:
        async with store.write() as tx:
            await _insert_things(tx)
            await tx.execute(INSERT_THING, THINGS[0])

    with pytest.raises(Exception, match=r"(?i)unique") as raised:
        await insert_twice()
    assert "Integrity" in type(raised.value).__name__ or "Unique" in type(raised.value).__name__


async def test_an_interval_round_trips_through_the_driver(store: Store) -> None:
    length = timedelta(days=2, seconds=90, microseconds=5)
    async with store.write() as tx:
        await tx.execute(INSERT_DURATION, {"id": 1, "length": length})
        assert (await tx.execute(DURATIONS)).scalars() == [length]
    async with store.read() as session:
        assert (await session.execute(select(durations.c.length))).scalars().all() == [length]


async def test_a_core_statement_given_as_such_runs_on_the_driver_too(
    store: Store, through_sqlalchemy: list[str]
) -> None:
    async with store.write() as tx:
        await _insert_things(tx)
        names = [
            (await tx.execute(select(things.c.name).where(things.c.id == id_))).scalar_one_or_none()
            for id_ in (1, 2, 3, 1)
        ]
    assert names == ["first", "second", "third", "first"]
    assert through_sqlalchemy == []


async def test_what_the_driver_cannot_run_is_refused_before_it_runs(store: Store) -> None:
    expanding = select(things).where(things.c.id.in_(bindparam("w_ids", expanding=True)))
    with pytest.raises(StatementRefused, match="expanding"):
        async with store.write() as tx:
            await tx.execute(expanding, {"w_ids": [1, 3]})
    with pytest.raises(StatementRefused, match="default"):
        async with store.write() as tx:
            await tx.execute(insert(defaulted), {"id": 1})
    assert await _count(store, defaulted) == 0
