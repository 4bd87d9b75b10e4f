"""sagakit's records in a participant's store: one interface, literal SQL per driver.

A ``Recorder`` owns the driver's connections and the write transaction: the inbox record of
a delivery, the claim of its step, the handler's own writes, the step's new status and the
events it emits commit together or not at all. Each backend (``_sqlite.py`` on ``sqlite3``,
``_postgres.py`` on asyncpg) writes its own SQL, as few statements per delivery as its
database allows; ``tests/integration/test_recorders.py`` runs one suite against both.

A delivery costs, on PostgreSQL: BEGIN, one statement that records the delivery and claims
its step (``remember``), the handler's statements, one that sets the step's status and
queues its events (``finish``), COMMIT; the sent marks of many deliveries go in one
``UPDATE ... WHERE event_id = ANY($1)`` outside any handler's transaction.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.sql import Executable

from sagakit.store._prepared import Prepared, Rows

# sagakit's tables, by name (their schema is in _store.py).
INBOX = "sagakit_inbox"
STEPS = "sagakit_saga_steps"
OUTBOX = "sagakit_outbox"
PROBE = "sagakit_probe"
# What a completed step kept for its compensation (runtime/_step_results.py), in stores whose
# metadata has it: it goes with the step log.
STEP_RESULTS = "sagakit_step_results"
OUTBOX_COLUMNS = "event_id, saga_id, routing_key, body, properties, headers"


class StepStatus(StrEnum):
    """Where one participant's step stands for one saga."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event waiting to be published, exactly as it will go on the wire."""

    event_id: str
    saga_id: str
    routing_key: str
    body: str
    properties: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Remembered:
    """What recording a delivery found.

    Attributes:
        first: The consumer had not handled this message before.
        digest: On a repeat, the body digest recorded the first time (None if none was).
        status: With a step: None when this delivery claimed it (it is now ``running``),
            else the status the step already had. Not looked at on a repeat.
    """

    first: bool
    digest: str | None = None
    status: StepStatus | None = None


class Transaction(abc.ABC):
    """One open write transaction of a store.

    Everything run through it, sagakit's records and the handler's own writes, commits
    together or not at all. ``execute`` runs a ``Prepared`` statement (or a Core statement,
    compiled on first use) with the values given.
    """

    backend: str

    async def execute(
        self, statement: Prepared | Executable, params: Mapping[str, Any] | None = None
    ) -> Rows:
        """Run ``statement`` with ``params`` in this transaction."""
        values = params or {}
        prepared = statement if isinstance(statement, Prepared) else _adhoc(statement)
        return await self._run(prepared, values)

    @abc.abstractmethod
    async def _run(self, prepared: Prepared, values: Mapping[str, Any]) -> Rows: ...


_ADHOC: dict[Executable, Prepared] = {}
# Core statements passed as such, compiled on first use: bounded, for code that builds a
# statement per call (it then compiles per call, and is slower, but runs).
_ADHOC_LIMIT = 512


def _adhoc(statement: Executable) -> Prepared:
    prepared = _ADHOC.get(statement)
    if prepared is None:
        prepared = Prepared(statement, at_start_up=False)
        if len(_ADHOC) < _ADHOC_LIMIT:
            _ADHOC[statement] = prepared
    return prepared


class Recorder(abc.ABC):
    """sagakit's records on one database: the interface each backend implements.

    Methods that take a transaction run in it; the others run on their own.
    """

    backend: str

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One write transaction, committed when the block ends without error."""

    @abc.abstractmethod
    async def prepare(self, statements: Sequence[Prepared]) -> None:
        """Compile ``statements`` for this driver now; raises StatementRefused."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection (the next use opens new ones)."""

    # -- in a transaction --------------------------------------------------------------

    @abc.abstractmethod
    async def remember(
        self,
        transaction: Transaction,
        *,
        consumer: str,
        message_id: str,
        saga_id: str,
        digest: str | None,
        step: str | None,
        now: datetime,
    ) -> Remembered:
        """Record that ``consumer`` handled ``message_id`` and, if it is the first time and
        a ``step`` is given, claim the step (``running``) unless it has a status already."""

    @abc.abstractmethod
    async def finish(
        self,
        transaction: Transaction,
        *,
        step: str | None,
        saga_id: str,
        status: StepStatus | None,
        reason: str | None,
        rows: Sequence[OutboxRow],
        now: datetime,
    ) -> list[OutboxRow]:
        """Set the step's status (if given) and queue ``rows``; returns them as they will be
        published (an event queued before is queued again with the body it had)."""

    @abc.abstractmethod
    async def step_status(
        self, transaction: Transaction, *, step: str, saga_id: str
    ) -> StepStatus | None:
        """The step's status for a saga, or None if the step never started."""

    @abc.abstractmethod
    async def unsent_of_saga(self, transaction: Transaction, *, saga_id: str) -> list[OutboxRow]:
        """The saga's events not marked sent, oldest first."""

    @abc.abstractmethod
    async def probe(self, transaction: Transaction, *, now: datetime) -> None:
        """Write the probe row."""

    # -- on their own --------------------------------------------------------------------

    @abc.abstractmethod
    async def mark_sent(self, event_ids: Sequence[str], *, now: datetime) -> None:
        """Mark events as published."""

    @abc.abstractmethod
    async def pending(self, *, created_before: datetime | None, limit: int) -> list[OutboxRow]:
        """Unsent events, oldest first (only those created before ``created_before``)."""

    @abc.abstractmethod
    async def unsent_among(self, event_ids: Sequence[str]) -> list[OutboxRow]:
        """Those of these events not marked sent, oldest first."""

    @abc.abstractmethod
    async def count_pending(self) -> int:
        """How many events wait to be published."""

    @abc.abstractmethod
    async def prune(self, table: str, *, before: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` rows of sagakit's ``table`` that retention no longer
        keeps (inbox: processed before; outbox: sent before; steps: changed before)."""

    @abc.abstractmethod
    async def count_rows(self) -> dict[str, int]:
        """How many rows sagakit's tables hold, by table."""


# Retention, per table: the column that ages a row (an outbox row unsent stays).
AGE_COLUMN = {
    INBOX: "processed_at",
    OUTBOX: "sent_at",
    STEPS: "updated_at",
    STEP_RESULTS: "created_at",
}


def outbox_values(rows: Sequence[OutboxRow], now: datetime) -> list[tuple[Any, ...]]:
    """The outbox columns of ``rows``, JSON as text, ``created_at`` a microsecond apart.

    Rows of one transaction are apart by a microsecond, so the relay's oldest-first order is
    the order they were written in, even after a crash.
    """
    return [
        (
            row.event_id,
            row.saga_id,
            row.routing_key,
            row.body,
            json.dumps(row.properties),
            json.dumps(row.headers),
            now + timedelta(microseconds=position),
        )
        for position, row in enumerate(rows)
    ]


def outbox_row(values: Sequence[Any]) -> OutboxRow:
    """An OutboxRow from the columns of ``OUTBOX_COLUMNS``."""
    event_id, saga_id, routing_key, body, properties, headers = values
    return OutboxRow(
        event_id=event_id,
        saga_id=saga_id,
        routing_key=routing_key,
        body=body,
        properties=_json(properties),
        headers=_json(headers),
    )


def _json(value: Any) -> dict[str, Any]:
    return dict(json.loads(value)) if isinstance(value, str | bytes) else dict(value)


def requeued_in_order(
    rows: Sequence[OutboxRow], inserted: set[str], again: Mapping[str, OutboxRow]
) -> list[OutboxRow]:
    """``rows`` as they will be published: those inserted as given, the others as first
    written."""
    return [row if row.event_id in inserted else again[row.event_id] for row in rows]
