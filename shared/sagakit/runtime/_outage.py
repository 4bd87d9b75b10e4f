"""Telling an infrastructure outage from a step's own failure, by the error's type.

A participant needs two things besides the handler's own work: its store and the broker.
When either is away, the step has not failed: the delivery waits (``_breaker.py``) instead of
spending the step's retry budget. This module only classifies errors; it does no I/O.

Store errors are recognised through the whole chain of causes (SQLAlchemy wraps the driver's
error, the driver path translates it, a rollback after a lost connection raises its own):

- SQLAlchemy: a ``DBAPIError`` whose connection was invalidated;
- SQLite: the result codes of a store that cannot be written or read (full, read-only,
  I/O error, cannot open, busy past the timeout, corrupt, not a database);
- PostgreSQL: SQLSTATE classes 08 (connection), 53 (insufficient resources: disk full, out of
  memory, too many connections), 57P01-57P05 (shut down, starting up), 58 (system, I/O) and
  25006 (a read-only transaction: a standby after a failover), and asyncpg's own connection
  errors;
- ``StoreUnavailable``, raised by the store itself (a SQLite file removed or replaced).

Some errors may or may not be the store's: a connection refused or reset, a timeout (of the
handler, or of the pool), a driver's interface error. They are ``POSSIBLE``: the runtime asks
the store itself, with a write probe, before it decides.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from enum import Enum

from sqlalchemy import exc as sa_exc

from sagakit._exceptions import StoreUnavailable as StoreUnavailable


class Verdict(Enum):
    """Whether an error means the store (or the broker) is away."""

    NO = "no"
    POSSIBLE = "possible"
    DEFINITE = "definite"


# SQLite primary result codes (the low byte of the extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_PROTOCOL = 15
_SQLITE_NOTADB = 26
_SQLITE_OUTAGE_CODES = frozenset(
    {
        _SQLITE_BUSY,
        _SQLITE_LOCKED,
        _SQLITE_NOMEM,
        _SQLITE_READONLY,
        _SQLITE_IOERR,
        _SQLITE_CORRUPT,
        _SQLITE_FULL,
        _SQLITE_CANTOPEN,
        _SQLITE_PROTOCOL,
        _SQLITE_NOTADB,
    }
)
# When a driver gives no code, its message says it.
_SQLITE_OUTAGE_MESSAGES = (
    "disk is full",
    "readonly database",
    "read-only database",
    "disk i/o error",
    "unable to open database",
    "database is locked",
    "database disk image is malformed",
    "file is not a database",
)

_POSTGRES_OUTAGE_CLASSES = ("08", "53", "58")
_POSTGRES_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "25006"})
_POSTGRES_CORRUPTION_STATES = frozenset({"XX001", "XX002"})


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything that caused it, each once: ``__cause__``, ``__context__``,
    and the driver's error that a SQLAlchemy ``DBAPIError`` wraps."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (
            getattr(current, "orig", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)


def store_verdict(error: BaseException) -> Verdict:
    """Whether ``error`` means the store is away: by the strongest sign in its causes."""
    verdict = Verdict.NO
    for cause in causes(error):
        found = _one_store_verdict(cause)
        if found is Verdict.DEFINITE:
            return found
        if found is Verdict.POSSIBLE:
            verdict = found
    return verdict


def _one_store_verdict(error: BaseException) -> Verdict:
    if isinstance(error, StoreUnavailable):
        return Verdict.DEFINITE
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return Verdict.DEFINITE
    if isinstance(error, sqlite3.Error):
        return _sqlite_verdict(error)
    sqlstate = _sqlstate(error)
    if sqlstate is not None:
        return _postgres_verdict(sqlstate)
    module = type(error).__module__
    if module.startswith("asyncpg") and type(error).__name__ in {
        "InterfaceError",
        "InternalClientError",
        "ProtocolError",
    }:
        return Verdict.POSSIBLE
    if isinstance(error, sa_exc.InterfaceError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        # An interface error is most often a closed connection; a pool timeout, a database
        # that stopped answering. Either may also be the handler's own doing.
        return Verdict.POSSIBLE
    if isinstance(error, OSError):  # ConnectionError and TimeoutError among them
        return Verdict.POSSIBLE
    return Verdict.NO


def _sqlite_verdict(error: sqlite3.Error) -> Verdict:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _SQLITE_OUTAGE_CODES:
        return Verdict.DEFINITE
    message = str(error).lower()
    if any(sign in message for sign in _SQLITE_OUTAGE_MESSAGES):
        return Verdict.DEFINITE
    return Verdict.NO


def _sqlstate(error: BaseException) -> str | None:
    # asyncpg's errors and SQLAlchemy's adaptation of them both carry ``sqlstate``.
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(error, attribute, None)
        if isinstance(value, str) and len(value) == 5:
            return value
    return None


def _postgres_verdict(sqlstate: str) -> Verdict:
    if sqlstate[:2] in _POSTGRES_OUTAGE_CLASSES:
        return Verdict.DEFINITE
    if sqlstate in _POSTGRES_OUTAGE_STATES or sqlstate in _POSTGRES_CORRUPTION_STATES:
        return Verdict.DEFINITE
    return Verdict.NO


def broker_refused(error: BaseException) -> bool:
    """Whether a publish failed because the broker is away or refuses messages.

    A returned message (unroutable: no queue bound for its routing key) is not refused: it
    is a topology problem, and the outbox relay publishes it again later.
    """
    from aiormq.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError

    for cause in causes(error):
        if isinstance(cause, PublishError):
            return False
        if isinstance(
            cause,
            DeliveryError  # a negative acknowledgement
            | ChannelInvalidStateError
            | AMQPError
            | OSError,  # ConnectionError and TimeoutError (no confirmation in time) among them
        ):
            return True
        if isinstance(cause, RuntimeError) and "closed" in str(cause).lower():
            return True
    return False
