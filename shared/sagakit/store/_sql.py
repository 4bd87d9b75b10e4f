"""One write transaction, its hot statements run on the driver's own connection.

SQLAlchemy builds and compiles every statement, once per statement and dialect; the
compiled SQL then runs on the DB-API connection under the transaction, with SQLAlchemy's
own bind and result processors applied. Measured on the benchmark machine
(bench/README.md), a statement costs 50 to 90 µs of CPU through SQLAlchemy's execution
layer and about 10 µs this way, and handling one message runs eight to ten of them.
A statement this cannot run as is (an expanding ``IN``, a Python-side column default, a
driver with named parameters) goes through SQLAlchemy, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import (
    DBAPIError,
    InvalidRequestError,
    MultipleResultsFound,
    NoResultFound,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None
_MISSING = object()
# Statements compiled for the driver, per store: far more than a service's handlers and
# sagakit's own records use, bounded for code that builds a statement per call.
COMPILED_CACHE_SIZE = 512


class Rows:
    """What a statement returned: its rows, for a query, and how many rows it touched.

    The subset of SQLAlchemy's ``Result`` that handlers use: ``all``, ``first``,
    ``one``, ``scalar_one_or_none``, ``scalars`` and ``mappings``. Rows are plain tuples,
    as ``Connection.execute`` returns them for Core statements.
    """

    __slots__ = ("_keys", "_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], *, keys: Sequence[str], rowcount: int) -> None:
        self._rows = rows
        self._keys = tuple(keys)
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def keys(self) -> tuple[str, ...]:
        """The column names of the rows."""
        return self._keys

    def all(self) -> list[tuple[Any, ...]]:
        """Every row."""
        return list(self._rows)

    def first(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    def one(self) -> tuple[Any, ...]:
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
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    processors: tuple[_Processor, ...]
    returns_rows: bool
    keys: tuple[str, ...]
    result_processors: tuple[_Processor, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, default, process in zip(self.names, self.defaults, self.processors, strict=True):
            value = params.get(name, default)
            if value is _MISSING:
                raise KeyError(f"statement parameter {name!r} has no value")
            values.append(process(value) if process is not None else value)
        return values

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if not any(self.result_processors):
            return [tuple(row) for row in fetched]
        return [
            tuple(
                process(value) if process is not None else value
                for process, value in zip(self.result_processors, row, strict=True)
            )
            for row in fetched
        ]


def compile_for_driver(
    statement: Executable, dialect: Dialect, keys: Sequence[str]
) -> _Compiled | None:
    """``statement`` compiled for running on the driver, or None if it must go through
    SQLAlchemy (see the module's docstring)."""
    if dialect.paramstyle not in {"qmark", "numeric_dollar"}:
        return None
    if not isinstance(statement, ClauseElement):
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
        return None
    # Python-side column defaults (and onupdate values) are computed by SQLAlchemy's
    # execution. (Its postfetch list, columns set by SQL expressions, only matters to the ORM.)
    prefetch = ("insert_prefetch", "update_prefetch")
    if (
        any(getattr(compiled, name, None) for name in prefetch)
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.escaped_bind_names
        or any(bind.expanding or bind.callable is not None for bind in compiled.binds.values())
    ):
        return None
    # qmark: one name per placeholder; numeric_dollar: one per $n, in order.
    names = tuple(compiled.positiontup)
    binds = [compiled.binds[name] for name in names]
    writes = compiled.isinsert or compiled.isupdate or compiled.isdelete
    if writes and compiled.effective_returning:
        return None
    selected = [] if writes else list(getattr(statement, "selected_columns", None) or [])
    if not writes and not selected:
        return None
    try:
        result_processors = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected
        )
    except (TypeError, ValueError, InvalidRequestError):
        # Some need the column's type as the database reports it (asyncpg's Numeric does).
        return None
    return _Compiled(
        sql=compiled.string,
        names=names,
        defaults=tuple(
            bind.value if bind.value is not None or not bind.required else _MISSING
            for bind in binds
        ),
        # dialect_impl: the type as this database stores it (variants, dialect types).
        processors=tuple(b.type.dialect_impl(dialect).bind_processor(dialect) for b in binds),
        returns_rows=not writes,
        keys=tuple(str(column.key) for column in selected),
        result_processors=result_processors,
    )


class Transaction:
    """One open write transaction of a Store.

    Everything run through it, sagakit's records and the handler's own writes, commits
    together or not at all. ``execute`` runs Core statements (build them once, with bound
    parameters, and pass the values); ``session`` is an ORM session in the same
    transaction, for code that prefers the ORM (it is flushed before the commit).
    """

    def __init__(
        self,
        connection: AsyncConnection,
        driver: Any,
        *,
        adapter: Any,
        is_sqlite: bool,
        cache: dict[tuple[Executable, tuple[str, ...]], _Compiled | None],
    ) -> None:
        self.connection = connection
        self._driver = driver
        self._adapter = adapter
        self._is_sqlite = is_sqlite
        self._cache = cache
        self._dialect = connection.dialect
        # asyncpg under SQLAlchemy opens its transaction on the first statement it runs
        # itself: until then, statements go through SQLAlchemy.
        self._begun = is_sqlite
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """An ORM session in this transaction (created on first use)."""
        if self._session is None:
            self._session = AsyncSession(
                bind=self.connection,
                expire_on_commit=False,
                join_transaction_mode="rollback_only",
            )
        return self._session

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        """Run ``statement`` with ``params`` in this transaction."""
        values = params or {}
        if self._session is not None:
            await self._session.flush()  # what the ORM holds must be written first
        compiled = self._compiled(statement, values)
        if compiled is None or not self._begun:
            self._begun = True
            return await self._through_sqlalchemy(statement, values)
        arguments = compiled.arguments(values)
        try:
            return await self._run(compiled, arguments)
        except Exception as error:
            raise self._translated(error, compiled.sql, arguments) from error

    async def _run(self, compiled: _Compiled, arguments: list[Any]) -> Rows:
        if self._is_sqlite:
            cursor = await self._driver.execute(compiled.sql, arguments)
            if compiled.returns_rows:
                fetched = await cursor.fetchall()
                return Rows(compiled.rows(fetched), keys=compiled.keys, rowcount=-1)
            return Rows([], keys=(), rowcount=cursor.rowcount)
        if compiled.returns_rows:
            records = await self._driver.fetch(compiled.sql, *arguments)
            return Rows(compiled.rows(records), keys=compiled.keys, rowcount=len(records))
        status = await self._driver.execute(compiled.sql, *arguments)
        return Rows([], keys=(), rowcount=_rowcount(status))

    def _translated(self, error: Exception, sql: str, arguments: list[Any]) -> Exception:
        """The driver's error as SQLAlchemy raises it (``sqlalchemy.exc.IntegrityError``
        and so on), so that the same failure looks the same on either path."""
        dbapi_error: type[Exception] = self._dialect.loaded_dbapi.Error
        if not isinstance(error, dbapi_error):
            # asyncpg raises its own classes; SQLAlchemy's adapter maps them to DB-API ones.
            translate = getattr(self._adapter, "_handle_exception", None)
            if translate is None:
                return error
            try:
                translate(error)
            except dbapi_error as adapted:
                error = adapted
            except Exception:
                return error
            else:
                return error
        return DBAPIError.instance(
            sql, arguments, error, dbapi_error, hide_parameters=True, dialect=self._dialect
        )

    def _compiled(self, statement: Executable, values: Mapping[str, Any]) -> _Compiled | None:
        key = (statement, tuple(values))
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(self._cache) >= COMPILED_CACHE_SIZE:
            # Statements built anew for every call would fill the cache for ever: once it
            # is full, what is not in it goes through SQLAlchemy, which has its own cache.
            return None
        compiled = compile_for_driver(statement, self._dialect, tuple(values))
        self._cache[key] = compiled
        return compiled

    async def _through_sqlalchemy(self, statement: Executable, values: Mapping[str, Any]) -> Rows:
        result = await self.connection.execute(statement, dict(values) if values else None)
        if result.returns_rows:
            keys = list(result.keys())
            rows = [tuple(row) for row in result.all()]
            return Rows(rows, keys=keys, rowcount=len(rows))
        return Rows([], keys=(), rowcount=result.rowcount)

    async def _before_commit(self) -> None:
        if self._session is not None:
            await self._session.flush()

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _rowcount(status: str) -> int:
    # asyncpg answers with the command tag: "INSERT 0 1", "UPDATE 3", "DELETE 0".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return -1
