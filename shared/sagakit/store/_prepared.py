"""A handler's own statements: SQLAlchemy Core, compiled once for the store's driver.

A ``Prepared`` statement is built once (at import) from a Core statement. When the store
starts, every ``Prepared`` on the service's tables is compiled to the driver's SQL (sqlite3's
``?`` or asyncpg's ``$n``), with the column types' own bind and result processors; what the
driver cannot run as compiled (an expanding ``IN``, a Python-side column default, a literal
whose type needs processing) is refused then, with the reason, instead of at the first
message. Only SQLAlchemy's public compilation API is used: the statement is compiled with the
``pyformat`` parameter style, whose ``%(name)s`` placeholders are renumbered here.

Rows come back named: ``charge.status``, as well as ``charge[2]``.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql import ClauseElement, Delete, Executable, Insert, Select, Update, visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import NullType

from sagakit._exceptions import StatementRefused

_Processor = Callable[[Any], Any] | None
_MISSING = object()
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")


def _dialect(backend: str) -> Dialect:
    # The driver's own dialect, asked for pyformat placeholders: those, unlike positional
    # ones, name each parameter in the SQL text itself.
    if backend == "sqlite":
        return pysqlite.dialect(paramstyle="pyformat")
    return pg_asyncpg.dialect(paramstyle="pyformat")  # type: ignore[no-untyped-call]


_DIALECTS: dict[str, Dialect] = {}


def dialect_for(backend: str) -> Dialect:
    """The dialect statements are compiled with for ``backend`` (sqlite, postgresql)."""
    dialect = _DIALECTS.get(backend)
    if dialect is None:
        dialect = _DIALECTS[backend] = _dialect(backend)
    return dialect


class Rows:
    """What a statement returned: its rows (named tuples), and how many rows it touched.

    The subset of SQLAlchemy's ``Result`` that handlers use: ``all``, ``first``, ``one``,
    ``scalar_one_or_none``, ``scalars`` and ``mappings``.
    """

    __slots__ = ("_keys", "_rows", "rowcount")

    def __init__(self, rows: list[Any], *, keys: Sequence[str], rowcount: int) -> None:
        self._rows = rows
        self._keys = tuple(keys)
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> tuple[str, ...]:
        """The column names of the rows."""
        return self._keys

    def all(self) -> list[Any]:
        """Every row."""
        return list(self._rows)

    def first(self) -> Any | None:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        """The only row; raises when there is none or more than one."""
        if not self._rows:
            raise NoResultFound("no row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar_one_or_none(self) -> Any:
        """The first column of the only row, or None when there is no row."""
        if len(self._rows) > 1:
            raise MultipleResultsFound("multiple rows were found when one or none was required")
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in self._rows]

    def mappings(self) -> _Mappings:
        """Every row as a dict of column name to value."""
        return _Mappings(dict(zip(self._keys, row, strict=True)) for row in self._rows)


class _Mappings(list[dict[str, Any]]):
    def one(self) -> dict[str, Any]:
        if not self:
            raise NoResultFound("no row was found when one was required")
        if len(self) > 1:
            raise MultipleResultsFound("multiple rows were found when exactly one was required")
        return self[0]


@dataclass(frozen=True, slots=True)
class Plan:
    """A statement as one driver runs it."""

    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    processors: tuple[_Processor, ...]
    returns_rows: bool
    keys: tuple[str, ...]
    result_types: tuple[Any, ...]
    row: type[Any]
    result_processors: tuple[_Processor, ...] = ()
    # Whether result_processors are known (on PostgreSQL some need the types the server
    # reports, learnt by preparing the statement once).
    resolved: bool = False

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The driver's positional arguments for ``params``."""
        values = []
        for name, default, process in zip(self.names, self.defaults, self.processors, strict=True):
            value = params.get(name, default)
            if value is _MISSING:
                raise KeyError(f"statement parameter {name!r} has no value")
            values.append(process(value) if process is not None else value)
        return values

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[Any]:
        """Driver rows as named rows, through the columns' result processors."""
        make = self.row._make
        if not any(self.result_processors):
            return [make(row) for row in fetched]
        processors = self.result_processors
        return [
            make(
                process(value) if process is not None else value
                for process, value in zip(processors, row, strict=True)
            )
            for row in fetched
        ]

    def with_result_processors(self, processors: Sequence[_Processor]) -> Plan:
        """This plan with the result processors for the column types the driver reported."""
        return Plan(
            sql=self.sql,
            names=self.names,
            defaults=self.defaults,
            processors=self.processors,
            returns_rows=self.returns_rows,
            keys=self.keys,
            result_types=self.result_types,
            row=self.row,
            result_processors=tuple(processors),
            resolved=True,
        )


class Prepared:
    """A Core statement compiled once per driver, for ``StepContext.execute``.

    Build it once, at import, with bound parameters, and pass the values when running it::

        _CHARGED = Prepared(select(payments.c.amount, payments.c.status).where(...))
        charge = (await step.execute(_CHARGED, {"w_saga_id": saga_id})).first()
        if charge is not None and charge.status == REFUNDED: ...

    The store compiles every ``Prepared`` on its tables when it starts and refuses, with
    ``StatementRefused``, what its driver cannot run.

    Args:
        statement: A Core ``select``, ``insert``, ``update`` or ``delete``.
        at_start_up: Compile it when a store on its tables starts (else on first use).
    """

    _instances: list[Prepared] = []  # noqa: RUF012 - every statement built, for start-up

    __slots__ = ("__weakref__", "_plans", "statement")

    def __init__(self, statement: Executable, *, at_start_up: bool = True) -> None:
        if not isinstance(statement, Select | Insert | Update | Delete):
            raise StatementRefused(
                f"Prepared takes a Core select, insert, update or delete, not {type(statement)}"
            )
        self.statement = statement
        self._plans: dict[tuple[str, tuple[str, ...] | None], Plan] = {}
        if at_start_up:
            Prepared._instances.append(self)

    def __repr__(self) -> str:
        return f"Prepared({str(self.statement)!r})"

    @classmethod
    def on_tables(cls, tables: Sequence[Table]) -> list[Prepared]:
        """Every Prepared built so far whose tables are all among ``tables``."""
        known = set(tables)
        return [p for p in cls._instances if p.tables() and p.tables() <= known]

    def tables(self) -> set[Table]:
        """The tables the statement reads or writes."""
        found: set[Table] = set()
        for element in visitors.iterate(self.statement):
            if isinstance(element, Table):
                found.add(element)
        return found

    def plan(self, backend: str, keys: Sequence[str] = ()) -> Plan:
        """The statement compiled for ``backend``; ``keys`` name the values of an insert
        or update that gives its columns as parameters."""
        column_keys = self._column_keys(keys)
        cache_key = (backend, column_keys)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = compile_plan(
                self.statement, dialect_for(backend), column_keys
            )
        return plan

    def start_up_keys(self) -> tuple[str, ...]:
        """The keys to compile with at start-up: an insert's columns come from the values
        given at run time, so it is checked with all of its table's."""
        table = getattr(self.statement, "table", None)
        if isinstance(self.statement, Insert) and isinstance(table, Table):
            return tuple(column.key for column in table.columns)
        return ()

    def remember(self, backend: str, keys: Sequence[str], plan: Plan) -> None:
        """Keep ``plan`` (with the result processors the driver made possible)."""
        self._plans[(backend, self._column_keys(keys))] = plan

    def _column_keys(self, keys: Sequence[str]) -> tuple[str, ...] | None:
        if not isinstance(self.statement, Insert | Update):
            return None
        return tuple(sorted(keys))


def compile_plan(
    statement: Executable, dialect: Dialect, column_keys: Sequence[str] | None
) -> Plan:
    """``statement`` compiled for ``dialect``'s driver; raises StatementRefused for what the
    driver cannot run as compiled."""
    if not isinstance(statement, ClauseElement):
        raise StatementRefused(f"not a Core statement: {statement!r}")
    binds: dict[str, BindParameter[Any]] = {}
    for element in visitors.iterate(statement):
        if isinstance(element, BindParameter):
            if element.expanding or element.literal_execute:
                raise StatementRefused(
                    f"{statement}: an expanding or literal-execute parameter ({element.key!r})"
                    " is rendered per call; use = ANY or a fixed number of parameters"
                )
            if element.callable is not None:
                raise StatementRefused(f"{statement}: a callable parameter ({element.key!r})")
            if element.unique and element.type.dialect_impl(dialect).bind_processor(dialect):
                # An anonymous parameter (a literal in the statement) gets its name when
                # compiled: its value is sent as it is, which a type with a bind processor
                # (a time on SQLite, JSON) would store differently from SQLAlchemy.
                raise StatementRefused(
                    f"{statement}: a literal of type {element.type} needs processing; give it"
                    " as a named bindparam"
                )
            binds[element.key] = element
    target = getattr(statement, "table", None) if isinstance(statement, Insert | Update) else None
    if isinstance(target, Table):
        for column in target.columns:
            python_side = (column.default is not None and not column.default.is_server_default) or (
                column.onupdate is not None and not column.onupdate.is_server_default
            )
            if python_side and not getattr(column.default, "is_sequence", False):
                raise StatementRefused(
                    f"{statement}: column {column.key!r} has a Python-side default, computed by"
                    " SQLAlchemy's execution; give its value or make it a server_default"
                )
    compiled = statement.compile(
        dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
    )
    params = compiled.params
    positional_qmark = dialect.name == "sqlite"
    order: list[str] = []
    numbers: dict[str, int] = {}

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if positional_qmark:
            order.append(name)
            return "?"
        if name not in numbers:
            order.append(name)
            numbers[name] = len(order)
        return f"${numbers[name]}"

    sql = _PLACEHOLDER.sub(placeholder, compiled.string)
    defaults = []
    processors = []
    for name in order:
        if name not in params:
            raise StatementRefused(f"{statement}: parameter {name!r} is renamed when compiled")
        bind = binds.get(name)
        type_ = bind.type if bind is not None else NullType()
        if isinstance(type_, NullType) and isinstance(target, Table) and name in target.c:
            type_ = target.c[name].type
        processor = type_.dialect_impl(dialect).bind_processor(dialect)
        value = params[name]
        if bind is None and column_keys is not None and name in column_keys:
            default: Any = _MISSING
        elif bind is None:  # an anonymous parameter (a literal): its value is fixed here
            default = value
        elif bind.value is not None or not bind.required:
            default = bind.value
        else:
            default = _MISSING
        defaults.append(default)
        processors.append(processor)
    columns: list[Any]
    if isinstance(statement, Select):
        columns = list(statement.selected_columns)
    elif isinstance(statement, Insert | Update | Delete):  # its RETURNING columns, if any
        columns = list(statement.exported_columns)
    else:
        columns = []
    keys = tuple(str(column.key) for column in columns)
    plan = Plan(
        sql=sql,
        names=tuple(order),
        defaults=tuple(defaults),
        processors=tuple(processors),
        returns_rows=bool(columns),
        keys=keys,
        result_types=tuple(column.type for column in columns),
        row=_row_type(keys),
        resolved=not columns,
    )
    if positional_qmark and columns:
        # sqlite3 reports no column types; SQLite's processors need none.
        return plan.with_result_processors(result_processors(plan, dialect, [None] * len(keys)))
    return plan


def result_processors(plan: Plan, dialect: Dialect, oids: Sequence[int | None]) -> list[_Processor]:
    """The columns' result processors, given the types the driver reports (``oids``;
    some of PostgreSQL's need them)."""
    processors = []
    for type_, oid in zip(plan.result_types, oids, strict=True):
        try:
            processors.append(type_.dialect_impl(dialect).result_processor(dialect, oid))
        except Exception as error:
            raise StatementRefused(
                f"{plan.sql}: a column of type {type_} cannot be read on this driver ({error})"
            ) from error
    return processors


_ROW_TYPES: dict[tuple[str, ...], type[Any]] = {}


def _row_type(keys: tuple[str, ...]) -> type[Any]:
    row = _ROW_TYPES.get(keys)
    if row is None:
        row = _ROW_TYPES[keys] = namedtuple("Row", keys, rename=True)
    return row
