"""The driver path's pieces without a database: Rows, and what compile_for_driver accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sagakit.store import Rows
from sagakit.store._sql import compile_for_driver
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
    insert,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg, psycopg
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(50)),
    Column("count", Integer),
)
documents = Table(
    "documents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("data", JSON),
    Column("at", DateTime(timezone=True)),
)
defaulted = Table(
    "defaulted",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("label", String(20), default="fresh"),
)
durations = Table(
    "durations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("length", Interval),
)
variants = Table(
    "variants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", String(50).with_variant(JSON(), "postgresql")),
)

SQLITE = sqlite.dialect()
ASYNCPG = asyncpg.dialect()  # type: ignore[no-untyped-call]
PSYCOPG = psycopg.dialect()  # type: ignore[no-untyped-call]
POSITIONAL = [pytest.param(SQLITE, id="qmark"), pytest.param(ASYNCPG, id="numeric_dollar")]


def _rows(*rows: tuple[Any, ...], rowcount: int = -1) -> Rows:
    return Rows(list(rows), keys=("id", "name"), rowcount=rowcount)


# -- Rows -----------------------------------------------------------------------------


def test_all_returns_every_row_as_a_fresh_list() -> None:
    rows = _rows((1, "a"), (2, "b"))
    everything = rows.all()
    everything.clear()
    assert rows.all() == [(1, "a"), (2, "b")]


def test_first_is_the_first_row_or_none() -> None:
    assert _rows((1, "a"), (2, "b")).first() == (1, "a")
    assert _rows().first() is None


def test_one_needs_exactly_one_row() -> None:
    assert _rows((1, "a")).one() == (1, "a")
    with pytest.raises(NoResultFound):
        _rows().one()
    with pytest.raises(MultipleResultsFound):
        _rows((1, "a"), (2, "b")).one()


def test_scalar_one_or_none_is_the_first_column_of_at_most_one_row() -> None:
    assert _rows((1, "a")).scalar_one_or_none() == 1
    assert _rows().scalar_one_or_none() is None
    with pytest.raises(MultipleResultsFound):
        _rows((1, "a"), (2, "b")).scalar_one_or_none()


def test_scalars_are_the_first_column_of_every_row() -> None:
    assert _rows((1, "a"), (2, "b")).scalars() == [1, 2]
    assert _rows().scalars() == []


def test_mappings_key_each_row_by_column_name() -> None:
    rows = _rows((1, "a"), (2, "b"))
    assert list(rows.mappings()) == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert _rows((3, "c")).mappings().one() == {"id": 3, "name": "c"}


def test_mappings_one_raises_no_result_found_without_rows() -> None:
    with pytest.raises(NoResultFound):
        _rows().mappings().one()


def test_mappings_one_raises_multiple_results_found_with_two_rows() -> None:
    with pytest.raises(MultipleResultsFound):
        _rows((1, "a"), (2, "b")).mappings().one()


def test_keys_iteration_and_rowcount() -> None:
    rows = _rows((1, "a"), (2, "b"), rowcount=2)
    assert rows.keys() == ("id", "name")
    assert list(rows) == [(1, "a"), (2, "b")]
    assert [name for _, name in rows] == ["a", "b"]
    assert rows.rowcount == 2
    assert Rows([], keys=[], rowcount=3).rowcount == 3


# -- compile_for_driver: what it compiles ------------------------------------------------


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_insert_compiles_with_its_parameters_in_placeholder_order(dialect: Dialect) -> None:
    compiled = compile_for_driver(insert(items), dialect, ["count", "id", "name"])
    assert compiled is not None
    assert compiled.names == ("id", "name", "count")
    assert compiled.sql.startswith("INSERT INTO items (id, name, count) VALUES")
    assert not compiled.returns_rows
    assert compiled.arguments({"name": "x", "count": 3, "id": 1}) == [1, "x", 3]


def test_a_parameter_used_twice_is_sent_twice_with_qmark() -> None:
    statement = update(items).where(items.c.id == bindparam("w")).values(count=bindparam("w"))
    compiled = compile_for_driver(statement, SQLITE, ["w"])
    assert compiled is not None
    assert compiled.sql.count("?") == 2
    assert compiled.names == ("w", "w")
    assert compiled.arguments({"w": 7}) == [7, 7]


def test_a_parameter_used_twice_is_sent_once_with_numeric_dollar() -> None:
    statement = update(items).where(items.c.id == bindparam("w")).values(count=bindparam("w"))
    compiled = compile_for_driver(statement, ASYNCPG, ["w"])
    assert compiled is not None
    assert compiled.sql.count("$1") == 2
    assert "$2" not in compiled.sql
    assert compiled.names == ("w",)
    assert compiled.arguments({"w": 7}) == [7]


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_update_takes_column_values_from_the_keys(dialect: Dialect) -> None:
    statement = update(items).where(items.c.id == bindparam("w_id"))
    compiled = compile_for_driver(statement, dialect, ["w_id", "name"])
    assert compiled is not None
    assert compiled.names == ("name", "w_id")
    assert compiled.arguments({"w_id": 1, "name": "renamed"}) == ["renamed", 1]


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_update_setting_a_sql_expression_runs_on_the_driver(dialect: Dialect) -> None:
    # count = count + :n is "postfetched" by SQLAlchemy for the ORM; the driver path needs
    # nothing back, so it must not fall back for it (the stock decrement is one of these).
    statement = (
        update(items)
        .where(items.c.id == bindparam("w_id"))
        .values(count=items.c.count + bindparam("n"))
    )
    compiled = compile_for_driver(statement, dialect, ["w_id", "n"])
    assert compiled is not None
    assert set(compiled.names) == {"n", "w_id"}
    assert "count +" in compiled.sql


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_a_select_returns_rows_under_its_column_keys(dialect: Dialect) -> None:
    statement = select(items.c.id, items.c.name).where(items.c.count > bindparam("least"))
    compiled = compile_for_driver(statement, dialect, ["least"])
    assert compiled is not None
    assert compiled.returns_rows
    assert compiled.keys == ("id", "name")
    assert compiled.names == ("least",)
    assert compiled.rows([(1, "a"), (2, "b")]) == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_a_literal_is_the_default_of_its_anonymous_parameter(dialect: Dialect) -> None:
    compiled = compile_for_driver(select(items.c.id).where(items.c.name == "x"), dialect, [])
    assert compiled is not None
    [name] = compiled.names
    assert name.startswith("name_")
    assert compiled.arguments({}) == ["x"]


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_a_missing_parameter_is_a_key_error_naming_it(dialect: Dialect) -> None:
    statement = select(items.c.name).where(items.c.id == bindparam("w_id"))
    compiled = compile_for_driver(statement, dialect, [])
    assert compiled is not None
    with pytest.raises(KeyError, match="w_id"):
        compiled.arguments({})


def test_json_and_datetime_values_go_through_sqlalchemys_processors_on_sqlite() -> None:
    compiled = compile_for_driver(insert(documents), SQLITE, ["id", "data", "at"])
    assert compiled is not None
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    id_, data, stored_at = compiled.arguments({"id": 1, "data": {"a": [1, 2]}, "at": at})
    assert id_ == 1
    assert json.loads(data) == {"a": [1, 2]}
    assert stored_at == "2024-05-06 07:08:09.123456"

    query = compile_for_driver(select(documents.c.data, documents.c.at), SQLITE, [])
    assert query is not None
    assert query.rows([('{"a": [1, 2]}', "2024-05-06 07:08:09.123456")]) == [
        ({"a": [1, 2]}, datetime(2024, 5, 6, 7, 8, 9, 123456))
    ]


def test_an_interval_is_processed_as_sqlalchemy_does_on_sqlite() -> None:
    compiled = compile_for_driver(insert(durations), SQLITE, ["id", "length"])
    assert compiled is not None
    expected = Interval().dialect_impl(SQLITE).bind_processor(SQLITE)
    assert expected is not None
    length = timedelta(seconds=90)
    assert compiled.arguments({"id": 1, "length": length}) == [1, expected(length)]


def test_a_type_variant_is_processed_as_sqlalchemy_does() -> None:
    compiled = compile_for_driver(insert(variants), ASYNCPG, ["id", "value"])
    assert compiled is not None
    assert compiled.arguments({"id": 1, "value": "x"}) == [1, '"x"']


# -- compile_for_driver: what it leaves to SQLAlchemy ------------------------------------


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_expanding_in_goes_through_sqlalchemy(dialect: Dialect) -> None:
    statement = select(items.c.id).where(items.c.id.in_(bindparam("ids", expanding=True)))
    assert compile_for_driver(statement, dialect, ["ids"]) is None


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_omitted_python_side_default_goes_through_sqlalchemy(dialect: Dialect) -> None:
    assert compile_for_driver(insert(defaulted), dialect, ["id"]) is None
    assert compile_for_driver(insert(defaulted), dialect, ["id", "label"]) is not None


@pytest.mark.parametrize("dialect", POSITIONAL)
def test_an_insert_returning_goes_through_sqlalchemy(dialect: Dialect) -> None:
    statement = insert(items).returning(items.c.id)
    assert compile_for_driver(statement, dialect, ["id", "name", "count"]) is None


@pytest.mark.parametrize(
    "dialect",
    [
        pytest.param(PSYCOPG, id="psycopg"),
        pytest.param(sqlite.dialect(paramstyle="named"), id="named"),
    ],
)
def test_a_driver_without_positional_parameters_goes_through_sqlalchemy(
    dialect: Dialect,
) -> None:
    assert dialect.paramstyle not in {"qmark", "numeric_dollar"}
    statement = select(items.c.name).where(items.c.id == bindparam("w_id"))
    assert compile_for_driver(statement, dialect, ["w_id"]) is None
    assert compile_for_driver(insert(items), dialect, ["id", "name", "count"]) is None
