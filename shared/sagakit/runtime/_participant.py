"""The participant API: a service declares its handlers against the spec; sagakit runs them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from sagakit._context import SagaContext, StepRecord
from sagakit._envelope import EventPayload
from sagakit._exceptions import SpecError
from sagakit.broker._topology import queue_name
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._prepared import Prepared, Rows
from sagakit.store._recorder import Transaction


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
    """

    transaction: Transaction
    saga: SagaContext
    event_id: uuid.UUID
    event_type: str
    attempt: int = 0
    failure: StepRecord | None = None

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
CompensationHandler = Callable[[Any, StepContext], Awaitable[EventPayload]]
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
        async def release(event: EventPayload, step: StepContext) -> InventoryReleased: ...
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

    def on_step(self, step: str) -> Callable[[HandlerT], HandlerT]:
        """Register the forward handler of ``step``; it returns the success payload."""
        spec = self._own_step(step)

        def register(handler: HandlerT) -> HandlerT:
            self._steps[spec.name] = handler
            return handler

        return register

    def on_compensation(self, step: str) -> Callable[[HandlerT], HandlerT]:
        """Register the handler that undoes ``step``; it returns the compensated payload."""
        spec = self._own_step(step)
        if not spec.has_compensation:
            raise SpecError(f"step {step!r} declares no compensated event")

        def register(handler: HandlerT) -> HandlerT:
            self._compensations[spec.name] = handler
            return handler

        return register

    def on_event(self, event_type: str) -> Callable[[HandlerT], HandlerT]:
        """Register a reaction: a side effect on ``event_type`` that emits nothing."""
        if not any(
            r.participant == self.name and r.trigger == event_type for r in self.spec.reactions
        ):
            raise SpecError(f"the spec gives {self.name!r} no reaction to {event_type!r}")

        def register(handler: HandlerT) -> HandlerT:
            self._reactions[event_type] = handler
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
                if undo is None:
                    raise SpecError(f"{self.name!r} has no compensation for {step.name!r}")
                subs.extend(
                    Subscription(
                        self.name, trigger, HandlerKind.COMPENSATION, step.name, undo, step
                    )
                    for trigger in step.compensate_on
                )
        for reaction in self.spec.reactions:
            if reaction.participant == self.name:
                handler_r = self._reactions.get(reaction.trigger)
                if handler_r is None:
                    raise SpecError(f"{self.name!r} has no handler for {reaction.trigger!r}")
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
