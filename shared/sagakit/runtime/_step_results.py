"""What a completed step leaves for its compensation: its success payload and the undos it
registered, kept in the participant's store with the step's record."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, bindparam, insert, select

from sagakit._context import utc_now
from sagakit.store._prepared import Prepared
from sagakit.store._recorder import Transaction

metadata = MetaData()

step_results = Table(
    "sagakit_step_results",
    metadata,
    Column("step", String(100), primary_key=True),
    Column("saga_id", String(36), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("undos", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Compiled for the store's driver when it starts, like a handler's statements.
_SAVE = Prepared(insert(step_results))
_LOAD = Prepared(
    select(step_results.c.payload, step_results.c.undos).where(
        step_results.c.step == bindparam("w_step"),
        step_results.c.saga_id == bindparam("w_saga_id"),
    )
)


@dataclass(frozen=True, slots=True)
class Undo:
    """An undo a step registered: the name of a ``Participant.undo`` function, its arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StepResult:
    """A completed step's success payload (JSON) and the undos it registered, in order."""

    payload: str
    undos: tuple[Undo, ...]


async def save(
    transaction: Transaction, *, step: str, saga_id: uuid.UUID, result: StepResult
) -> None:
    """Keep ``result`` with the step's record, in the step's own transaction (the claim on
    the step makes this the only writer)."""
    undos = [{"name": u.name, "arguments": u.arguments} for u in result.undos]
    await transaction.execute(
        _SAVE,
        {
            "step": step,
            "saga_id": str(saga_id),
            "payload": result.payload,
            "undos": json.dumps(undos),
            "created_at": utc_now(),
        },
    )


async def load(transaction: Transaction, *, step: str, saga_id: uuid.UUID) -> StepResult | None:
    """What the step left when it completed, or None (a step completed before sagakit kept
    results)."""
    row = (await transaction.execute(_LOAD, {"w_step": step, "w_saga_id": str(saga_id)})).first()
    if row is None:
        return None
    undos = tuple(Undo(u["name"], u["arguments"]) for u in json.loads(row.undos))
    return StepResult(payload=str(row.payload), undos=undos)
