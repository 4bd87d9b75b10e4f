"""Prepared statements without a database: Rows, and what each driver's compilation gives
or refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sagakit.store import Prepared, Rows, StatementRefused
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

BACKENDS = ["sqlite", "postgresql"]


def _plan(statement: Any, backend: str, keys: list[str] | None = None) -> Any:
    return Prepared(statement, at_start_up=False).plan(backend, keys or [])


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


def test_rows_are_named_and_still_tuples() -> None:
    plan = _plan(select(items.c.id, items.c.name), "sqlite")
    [row] = plan.rows([(1, "a")])
    assert (row.id, row.name) == (1, "a")
    assert row == (1, "a")
    assert row[1] == "a"


# -- what each driver gets ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_insert_compiles_with_its_parameters_in_placeholder_order(backend: str) -> None:
    plan = _plan(insert(items), backend, ["count", "id", "name"])
    assert plan.names == ("id", "name", "count")
    assert plan.sql.startswith("INSERT INTO items (id, name, count) VALUES")
    assert not plan.returns_rows
    assert plan.arguments({"name": "x", "count": 3, "id": 1}) == [1, "x", 3]


def test_a_parameter_used_twice_is_sent_twice_on_sqlite() -> None:
    statement = update(items).where(items.c.id == bindparam("w")).values(count=bindparam("w"))
    plan = _plan(statement, "sqlite", ["w"])
    assert plan.sql.count("?") == 2
    assert plan.names == ("w", "w")
    assert plan.arguments({"w": 7}) == [7, 7]


def test_a_parameter_used_twice_is_sent_once_on_postgresql() -> None:
    statement = update(items).where(items.c.id == bindparam("w")).values(count=bindparam("w"))
    plan = _plan(statement, "postgresql", ["w"])
    assert plan.sql.count("$1") == 2
    assert "$2" not in plan.sql
    assert plan.names == ("w",)
    assert plan.arguments({"w": 7}) == [7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_percent_sign_in_the_sql_stays_one(backend: str) -> None:
    statement = select(items.c.id).where(items.c.name.like("50%"), items.c.count % 2 == 0)
    plan = _plan(statement, backend)
    assert "%%" not in plan.sql
    assert plan.sql.count("%") == 1  # the modulo; the pattern is a parameter
    assert "50%" in plan.arguments({})


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_takes_column_values_from_the_keys(backend: str) -> None:
    plan = _plan(update(items).where(items.c.id == bindparam("w_id")), backend, ["w_id", "name"])
    assert plan.names == ("name", "w_id")
    assert plan.arguments({"w_id": 1, "name": "renamed"}) == ["renamed", 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_setting_a_sql_expression_runs_on_the_driver(backend: str) -> None:
    statement = (
        update(items)
        .where(items.c.id == bindparam("w_id"))
        .values(count=items.c.count + bindparam("n"))
    )
    plan = _plan(statement, backend, ["w_id", "n"])
    assert set(plan.names) == {"n", "w_id"}
    assert "count +" in plan.sql


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_select_returns_named_rows_under_its_column_keys(backend: str) -> None:
    statement = select(items.c.id, items.c.name).where(items.c.count > bindparam("least"))
    plan = _plan(statement, backend, ["least"])
    assert plan.returns_rows
    assert plan.keys == ("id", "name")
    assert plan.names == ("least",)
    assert [row.name for row in plan.rows([(1, "a"), (2, "b")])] == ["a", "b"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_insert_returning_returns_its_columns(backend: str) -> None:
    plan = _plan(insert(items).returning(items.c.id), backend, ["id", "name", "count"])
    assert plan.returns_rows
    assert plan.keys == ("id",)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_literal_is_the_default_of_its_anonymous_parameter(backend: str) -> None:
    plan = _plan(select(items.c.id).where(items.c.name == "x"), backend)
    [name] = plan.names
    assert name.startswith("name_")
    assert plan.arguments({}) == ["x"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_parameter_is_a_key_error_naming_it(backend: str) -> None:
    plan = _plan(select(items.c.name).where(items.c.id == bindparam("w_id")), backend)
    with pytest.raises(KeyError, match="w_id"):
        plan.arguments({})


def test_json_and_datetime_values_go_through_sqlalchemys_processors_on_sqlite() -> None:
    plan = _plan(insert(documents), "sqlite", ["id", "data", "at"])
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    id_, data, stored_at = plan.arguments({"id": 1, "data": {"a": [1, 2]}, "at": at})
    assert id_ == 1
    assert json.loads(data) == {"a": [1, 2]}
    assert stored_at == "2024-05-06 07:08:09.123456"

    query = _plan(select(documents.c.data, documents.c.at), "sqlite")
    assert query.rows([('{"a": [1, 2]}', "2024-05-06 07:08:09.123456")]) == [
        ({"a": [1, 2]}, datetime(2024, 5, 6, 7, 8, 9, 123456))
    ]


def test_an_interval_is_processed_as_sqlalchemy_does_on_sqlite() -> None:
    plan = _plan(insert(durations), "sqlite", ["id", "length"])
    expected = (
        Interval().dialect_impl(plan_dialect("sqlite")).bind_processor(plan_dialect("sqlite"))
    )
    assert expected is not None
    length = timedelta(seconds=90)
    assert plan.arguments({"id": 1, "length": length}) == [1, expected(length)]


def test_a_type_variant_is_processed_as_sqlalchemy_does() -> None:
    plan = _plan(insert(variants), "postgresql", ["id", "value"])
    assert plan.arguments({"id": 1, "value": "x"}) == [1, '"x"']


def test_a_value_set_in_the_statement_takes_the_columns_type() -> None:
    statement = update(documents).where(documents.c.id == 1).values(at=bindparam("at"))
    plan = _plan(statement, "sqlite", ["at"])
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert plan.arguments({"at": at})[0] == "2024-05-06 07:08:09.123456"


# -- what is refused, when the store starts -----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_expanding_in_is_refused(backend: str) -> None:
    statement = select(items.c.id).where(items.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(StatementRefused, match="expanding"):
        _plan(statement, backend, ["ids"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_python_side_default_is_refused(backend: str) -> None:
    with pytest.raises(StatementRefused, match="Python-side default"):
        _plan(insert(defaulted), backend, ["id", "label"])


def test_a_literal_whose_type_needs_processing_is_refused() -> None:
    at = datetime(2024, 5, 6, tzinfo=UTC)
    with pytest.raises(StatementRefused, match="named bindparam"):
        _plan(select(documents.c.id).where(documents.c.at < at), "sqlite")


def test_only_statements_are_prepared() -> None:
    with pytest.raises(StatementRefused, match="select, insert, update or delete"):
        Prepared(items.c.id == 1)  # type: ignore[arg-type]


def test_statements_built_at_import_are_found_by_their_tables() -> None:
    mine = Prepared(select(items.c.id))
    other = Prepared(select(documents.c.id))
    later = Prepared(select(items.c.name), at_start_up=False)
    found = Prepared.on_tables([items])
    assert mine in found
    assert other not in found
    assert later not in found


def plan_dialect(backend: str) -> Any:
    from sagakit.store._prepared import dialect_for

    return dialect_for(backend)
