"""Telling an outage of the store or the broker from a step's own failure, by error type."""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import pytest
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from pamqp import commands
from sagakit import BusinessFailure, TransientError
from sagakit.runtime import StoreUnavailable
from sagakit.runtime._outage import Verdict, broker_refused, causes, store_verdict
from sqlalchemy import exc as sa_exc


def sqlite_error(message: str, code: int | None) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    if code is not None:
        error.sqlite_errorcode = code
    return error


def wrapped(orig: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """As SQLAlchemy raises a driver's error."""
    error = sa_exc.DBAPIError.instance(
        "INSERT INTO t VALUES (?)",
        None,
        orig,
        sqlite3.Error,
        connection_invalidated=invalidated,
    )
    assert isinstance(error, sa_exc.DBAPIError)
    return error


def returned() -> PublishError:
    """What aiormq raises when the broker returns an unroutable message."""
    frame = commands.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="x")
    message = DeliveredMessage(delivery=frame, header=None, body=b"", channel=None)  # type: ignore[arg-type]
    return PublishError(message, frame)


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as chained:
        return chained


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        # SQLite, by result code (extended codes keep the primary one in the low byte)
        (sqlite_error("database or disk is full", 13), Verdict.DEFINITE),
        (sqlite_error("attempt to write a readonly database", 8), Verdict.DEFINITE),
        (sqlite_error("disk I/O error", 10 | (3 << 8)), Verdict.DEFINITE),  # IOERR_WRITE
        (sqlite_error("unable to open database file", 14), Verdict.DEFINITE),
        (sqlite_error("database is locked", 5), Verdict.DEFINITE),
        # ... or by message when a driver gives no code
        (sqlite_error("database or disk is full", None), Verdict.DEFINITE),
        # a handler's mistake is not an outage
        (sqlite_error("no such table: stock", 1), Verdict.NO),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), Verdict.NO),
        # PostgreSQL through asyncpg, by SQLSTATE
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), Verdict.DEFINITE),
        (asyncpg.exceptions.CannotConnectNowError("the database is starting up"), Verdict.DEFINITE),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), Verdict.DEFINITE),
        (asyncpg.exceptions.DiskFullError("could not extend file"), Verdict.DEFINITE),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), Verdict.DEFINITE),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), Verdict.DEFINITE),
        (asyncpg.exceptions.PostgresIOError("could not write"), Verdict.DEFINITE),
        (asyncpg.exceptions.SerializationError("could not serialize"), Verdict.NO),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), Verdict.NO),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), Verdict.NO),
        (asyncpg.exceptions.InterfaceError("connection is closed"), Verdict.POSSIBLE),
        # SQLAlchemy's own signs
        (wrapped(sqlite_error("anything", 1), invalidated=True), Verdict.DEFINITE),
        (sa_exc.TimeoutError("QueuePool limit reached"), Verdict.POSSIBLE),
        # may be the store's, may be a call to another system: the store is asked
        (ConnectionRefusedError(111, "Connection refused"), Verdict.POSSIBLE),
        (TimeoutError(), Verdict.POSSIBLE),
        # the store itself says so
        (StoreUnavailable("the SQLite file is gone"), Verdict.DEFINITE),
        # a step's own failures
        (TransientError("the payment gateway is slow"), Verdict.NO),
        (BusinessFailure("card_declined"), Verdict.NO),
        (ValueError("bad amount"), Verdict.NO),
        (KeyError("sku"), Verdict.NO),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_store_errors_are_classified_by_type(error: BaseException, verdict: Verdict) -> None:
    assert store_verdict(error) is verdict


def test_a_driver_error_is_found_inside_sqlalchemys_wrapper() -> None:
    assert store_verdict(wrapped(sqlite_error("disk I/O error", 10))) is Verdict.DEFINITE
    assert store_verdict(wrapped(sqlite_error("no such column: x", 1))) is Verdict.NO


def test_a_store_outage_behind_a_handlers_own_error_is_still_an_outage() -> None:
    # A handler that turned the store's failure into a TransientError.
    error = raised_from(TransientError("could not save"), sqlite_error("disk is full", 13))
    assert store_verdict(error) is Verdict.DEFINITE


def test_an_outage_during_the_rollback_of_another_error_is_found() -> None:
    # The connection died: the rollback fails, with the first error as its context.
    def rolled_back() -> None:
        try:
            raise ValueError("the handler's error")
        except ValueError:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("closed") from None

    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as raised:
        rolled_back()
    assert isinstance(raised.value.__context__, ValueError)
    assert store_verdict(raised.value) is Verdict.DEFINITE


def test_the_strongest_sign_wins() -> None:
    error = raised_from(ConnectionResetError(), sqlite_error("disk is full", 13))
    assert store_verdict(error) is Verdict.DEFINITE
    assert store_verdict(raised_from(ValueError(), ConnectionResetError())) is Verdict.POSSIBLE


def test_causes_end_on_cycles() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert list(causes(first)) == [first, second]


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (DeliveryError(None, commands.Basic.Nack()), True),  # the broker said no
        (ConnectionResetError(), True),
        (ChannelInvalidStateError("closed"), True),
        (TimeoutError(), True),  # no confirmation in time: a queue without a leader
        (RuntimeError("Connection closed"), True),
        (returned(), False),  # unroutable: a topology matter
        (ValueError("cannot encode"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_publishes_refused_by_the_broker_are_told_from_unroutable_ones(
    error: BaseException, refused: bool
) -> None:
    assert broker_refused(error) is refused
