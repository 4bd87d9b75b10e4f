"""The participant API: a service declares its handlers against the spec; sagakit runs them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from sagakit._context import SagaContext, StepRecord, check_data
from sagakit._envelope import EventPayload
from sagakit._exceptions import HandlerError, SpecError
from sagakit.broker._topology import queue_name
from sagakit.runtime._step_results import Undo
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._prepared import Prepared, Rows
from sagakit.store._recorder import Transaction

UndoFunction = Callable[..., Awaitable[None]]
UndoT = TypeVar("UndoT", bound=UndoFunction)


@dataclass(slots=True)
class StepRun:
    """What one run of a handler adds: data for the saga's later steps, undos registered."""

    undo_functions: Mapping[str, UndoFunction] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    undos: list[Undo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler gets besides the payload: its transaction and the saga so far.

    The handler writes the service's own state in ``transaction`` (through ``execute``,
    with ``Prepared`` Core statements); it commits together with the inbox record, the
    step's status and the outgoing events, or not at all.

    Attributes:
        transaction: The open transaction.
        saga: The incoming event's SagaContext.
        event_id: The id of the incoming event.
        event_type: The type of the incoming event.
        attempt: 0 on first delivery, then 1, 2, … on retries after transient errors.
        failure: On compensation, the failed step that started the backward path.
        run: What this run adds (``add_data``, ``undo``); sagakit reads it.
    """

    transaction: Transaction
    saga: SagaContext
    event_id: uuid.UUID
    event_type: str
    attempt: int = 0
    failure: StepRecord | None = None
    run: StepRun = field(default_factory=StepRun)

    @property
    def data(self) -> Mapping[str, Any]:
        """The saga's data bag: what earlier steps added (and this one, so far)."""
        return {**self.saga.data, **self.run.data}

    def add_data(self, **values: Any) -> None:
        """Add ``values`` to the saga's data bag: every later event of the saga carries
        them, and every later handler reads them in ``data``. Bounded (32 keys, 4 KiB of
        JSON) and kept only if the step completes: ids and amounts, not documents.
        """
        merged = {**self.data, **values}
        try:
            check_data(merged)
        except (TypeError, ValueError) as error:
            raise HandlerError(f"add_data({', '.join(values)}): {error}") from error
        self.run.data.update(values)

    def undo(self, function: UndoFunction, /, **arguments: Any) -> None:
        """Register ``function(**arguments)`` to undo what this step does outside its
        database (a card charge, a transfer at a bank).

        Register it before or while doing the work: sagakit runs it (latest first) if the
        step then fails, in any way, and when the step is compensated later; the arguments
        are kept with the step's record, so they must be JSON. ``function`` must be
        registered with ``Participant.undo``, and must be idempotent: a crash may run it
        twice.
        """
        name = getattr(function, "__name__", repr(function))
        if self.run.undo_functions.get(name) is not function:
            raise HandlerError(
                f"step.undo({name}): register it first with @<participant>.undo (the function"
                " is found again by name when the step is compensated, maybe after a restart)"
            )
        try:
            json.dumps(arguments)
        except (TypeError, ValueError) as error:
            raise HandlerError(f"step.undo({name}): its arguments must be JSON: {error}") from error
        self.run.undos.append(Undo(name, arguments))

    @property
    def saga_id(self) -> uuid.UUID:
        """The saga's id."""
        return self.saga.saga_id

    async def execute(
        self, statement: Prepared | Executable, params: Mapping[str, Any] | None = None
    ) -> Rows:
        """Run a statement with ``params`` in the handler's transaction; rows come back
        named (``row.status``).

        Build it once as a module constant, ``Prepared(select(...).where(... ==
        bindparam("w_id")))``, and pass the values here: the store compiles it for its
        driver when it starts, and refuses then what the driver cannot run. (A bare Core
        statement is compiled on first use instead.)
        """
        return await self.transaction.execute(statement, params)


PayloadT = TypeVar("PayloadT", bound=EventPayload)
StepHandler = Callable[[Any, StepContext], Awaitable[EventPayload]]
CompensationHandler = Callable[[Any, StepContext], Awaitable[EventPayload | None]]
ReactionHandler = Callable[[Any, StepContext], Awaitable[None]]
HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[Any]])


class HandlerKind(StrEnum):
    """Why a participant consumes an event."""

    STEP = "step"
    COMPENSATION = "compensation"
    REACTION = "reaction"


@dataclass(frozen=True, slots=True)
class Subscription:
    """One consumed event type of a participant, with the handler that serves it."""

    participant: str
    event_type: str
    kind: HandlerKind
    name: str
    handler: Callable[..., Awaitable[Any]]
    step: StepSpec | None = None

    @property
    def queue(self) -> str:
        """The queue this subscription consumes from."""
        return queue_name(self.participant, self.event_type)


@dataclass
class Participant:
    """One service's part in a saga, declared against the flow's spec.

    Args:
        name: The participant's name as the spec writes it (e.g. ``inventory``).
        spec: The flow this participant takes part in.
        tables: The metadata of the service's own tables, created beside sagakit's.
        initialize: Run once per start, in a transaction, after the tables exist (e.g. to
            seed reference data that is missing).

    Example:
        ```python
        inventory = Participant("inventory", spec=ORDER_SAGA, tables=Base.metadata)

        @inventory.on_step("reserve_stock")
        async def reserve(order: OrderCreated, step: StepContext) -> InventoryReserved: ...

        @inventory.on_compensation("reserve_stock")
        async def release(done: InventoryReserved, step: StepContext) -> InventoryReleased:
            ...
        ```
    """

    name: str
    spec: SagaSpec
    tables: MetaData | None = None
    initialize: Callable[[AsyncSession], Awaitable[None]] | None = None
    _steps: dict[str, StepHandler] = field(default_factory=dict, init=False, repr=False)
    _compensations: dict[str, CompensationHandler] = field(
        default_factory=dict, init=False, repr=False
    )
    _reactions: dict[str, ReactionHandler] = field(default_factory=dict, init=False, repr=False)
    _undos: dict[str, UndoFunction] = field(default_factory=dict, init=False, repr=False)

    @property
    def undo_functions(self) -> Mapping[str, UndoFunction]:
        """The functions registered with ``undo``, by name."""
        return self._undos

    def undo(self, function: UndoT) -> UndoT:
        """Register an undo function that steps name in ``StepContext.undo``.

        Example:
            ```python
            @payout.undo
            async def reverse_transfer(key: str) -> None:
                bank.reverse(key)

            # in the step, before the call it undoes:
            step.undo(reverse_transfer, key=str(step.saga_id))
            ```
        """
        self._undos[function.__name__] = function
        return function

    def on_step(self, step: str) -> Callable[[HandlerT], HandlerT]:
        """Register the forward handler of ``step``; it returns the success payload."""
        spec = self._own_step(step)

        def register(handler: HandlerT) -> HandlerT:
            self._steps[spec.name] = handler
            return handler

        return register

    def on_compensation(self, step: str) -> Callable[[HandlerT], HandlerT]:
        """Register the handler that undoes ``step``.

        It receives what the step produced (its success payload, kept with the step's
        record) and returns the compensated payload, or None to have sagakit build it.
        """
        spec = self._own_step(step)
        if not spec.has_compensation:
            raise SpecError(
                f"step {step!r} declares no compensated event, so nothing would ever call "
                "this compensation: give the step a compensated event in the spec (if a later "
                "step can fail), or undo an effect outside the database with StepContext.undo"
            )

        def register(handler: HandlerT) -> HandlerT:
            self._compensations[spec.name] = handler
            return handler

        return register

    def on_reaction(self, reaction: str) -> Callable[[HandlerT], HandlerT]:
        """Register the handler of ``reaction``: a side effect on its trigger event that
        emits nothing (e.g. sending a cancellation notice)."""
        if not any(r.participant == self.name and r.name == reaction for r in self.spec.reactions):
            mine = [r.name for r in self.spec.reactions if r.participant == self.name]
            raise SpecError(
                f"the spec gives {self.name!r} no reaction {reaction!r} (its reactions: "
                f"{', '.join(mine) or 'none'})"
            )

        def register(handler: HandlerT) -> HandlerT:
            self._reactions[reaction] = handler
            return handler

        return register

    def subscriptions(self) -> list[Subscription]:
        """Every event type this participant consumes, checked against the spec."""
        subs: list[Subscription] = []
        for step in self.spec.steps:
            if step.participant != self.name:
                continue
            handler = self._steps.get(step.name)
            if handler is None:
                raise SpecError(f"{self.name!r} has no handler for step {step.name!r}")
            subs.append(
                Subscription(self.name, step.trigger, HandlerKind.STEP, step.name, handler, step)
            )
            if step.has_compensation:
                undo = self._compensations.get(step.name)
                if undo is None and self._undos:
                    # Its effect is outside the database: its undos are the compensation.
                    undo = _undos_only
                if undo is None:
                    raise SpecError(
                        f"{self.name!r} has no compensation for {step.name!r}: register one "
                        f"with @{self.name}.on_compensation({step.name!r}) (or, if the "
                        "step's only effect is outside the database, an undo it registers "
                        f"with step.undo, the function with @{self.name}.undo)"
                    )
                subs.extend(
                    Subscription(
                        self.name, trigger, HandlerKind.COMPENSATION, step.name, undo, step
                    )
                    for trigger in step.compensate_on
                )
        for reaction in self.spec.reactions:
            if reaction.participant == self.name:
                handler_r = self._reactions.get(reaction.name)
                if handler_r is None:
                    raise SpecError(
                        f"{self.name!r} has no handler for its reaction {reaction.name!r}: "
                        f"register one with @{self.name}.on_reaction({reaction.name!r})"
                    )
                subs.append(
                    Subscription(
                        self.name, reaction.trigger, HandlerKind.REACTION, reaction.name, handler_r
                    )
                )
        return subs

    def _own_step(self, step: str) -> StepSpec:
        spec = self.spec.step(step)
        if spec.participant != self.name:
            raise SpecError(f"step {step!r} belongs to {spec.participant!r}, not {self.name!r}")
        return spec


async def _undos_only(done: Any, step: StepContext) -> None:
    """The compensation of a step whose only effect is outside the database: sagakit runs
    the undos the step registered, then announces the compensated event."""
