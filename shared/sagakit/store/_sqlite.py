"""SQLite for SQLAlchemy's asyncio engine, run on the event loop's own thread.

aiosqlite hands every call (cursor, execute, fetch, close, commit) to a worker thread and
back: three or four thread switches per statement, which cost more than the statement. A
local SQLite statement in WAL mode with ``synchronous=NORMAL`` takes microseconds and
commits without an fsync, so the store runs them inline instead. This object speaks the
part of aiosqlite's interface that SQLAlchemy's ``sqlite+aiosqlite`` dialect uses
(``create_async_engine(..., async_creator=...)``), on the same ``sqlite3`` module, so the
transactions, locking and durability are those of the aiosqlite store.

A statement that must wait for another process's lock blocks the loop for up to the busy
timeout; sagakit's store takes one in-process writer lock, and one process owns a file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any


class InlineCursor:
    """An aiosqlite-style cursor whose coroutines run at once."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _RunNow:
    """Stands in for aiosqlite's request queue: SQLAlchemy sets the isolation level by
    putting ``(future, function)`` on it."""

    __slots__ = ()

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class InlineConnection:
    """An aiosqlite-style connection over a ``sqlite3`` connection, without a thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = connection
        self._tx = _RunNow()

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # SQLAlchemy's adapter checks this to know whether the connection is still open.
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("Connection closed")
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._open().isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._open().in_transaction

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._open().cursor())

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._open().commit()

    async def rollback(self) -> None:
        self._open().rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._open().create_function(*args, **kwargs)

    async def close(self) -> None:
        connection, self._conn = self._conn, None
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's terminate)."""
        connection, self._conn = self._conn, None
        if connection is not None:
            connection.close()


def inline_connector(database: str, *, timeout: float) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine`` that opens ``database`` inline."""

    async def connect() -> InlineConnection:
        # As aiosqlite opens it: sqlite3's default (deferred) transaction handling.
        return InlineConnection(sqlite3.connect(database, timeout=timeout, check_same_thread=False))

    return connect
