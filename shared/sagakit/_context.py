"""SagaContext: what travels with every event; DeliveryScope: what sagakit knows in-process
about the delivery a task is handling, in the one ContextVar that holds it.

``SagaMiddleware`` (``sagakit.runtime._middleware``) makes a scope current for each delivery;
everything below it (the dispatcher, log lines, spans, the outbox) reads that scope. It lives
here, below the runtime, so that logging and tracing can read it without importing the runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class StepOutcome(StrEnum):
    """What happened to a step of a saga."""

    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


# Bounds of what travels in every event: a context is copied into each event a saga emits,
# so nothing in it may grow without limit (a padded reason would otherwise be copied into
# every later event, past the size any consumer takes).
NAME_MAX_LENGTH = 100
REASON_MAX_LENGTH = 200
DETAIL_MAX_LENGTH = 1000
"""A failure's human explanation (in failure events' payloads) is cut to this length."""
STEPS_MAX_LENGTH = 256
DATA_MAX_KEYS = 32
DATA_MAX_BYTES = 4096
"""The saga's data bag (``SagaContext.data``): at most this many keys and JSON bytes."""


class StepRecord(BaseModel):
    """One entry of a saga's history: a step, who did it, how it ended, and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str = Field(min_length=1, max_length=NAME_MAX_LENGTH)
    participant: str = Field(min_length=1, max_length=NAME_MAX_LENGTH)
    outcome: StepOutcome
    at: AwareDatetime
    reason: str | None = Field(default=None, max_length=REASON_MAX_LENGTH)


class SagaContext(BaseModel):
    """The saga's identity and history, carried by every event of the saga."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    saga_id: uuid.UUID
    saga_type: str = Field(max_length=NAME_MAX_LENGTH)
    causation_id: uuid.UUID | None = None
    deadline: AwareDatetime | None = None
    steps: tuple[StepRecord, ...] = Field(default_factory=tuple, max_length=STEPS_MAX_LENGTH)
    data: dict[str, JsonValue] = Field(default_factory=dict)
    """What the steps so far added for the later ones (``StepContext.add_data``), bounded:
    32 keys, 4 KiB of JSON."""

    @field_validator("data")
    @classmethod
    def _bounded(cls, data: dict[str, JsonValue]) -> dict[str, JsonValue]:
        check_data(data)
        return data

    @model_serializer(mode="wrap")
    def _without_empty_data(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A saga that adds nothing sends the context as it was before the data bag existed.
        fields: dict[str, Any] = handler(self)
        if not self.data:
            fields.pop("data", None)
        return fields

    @classmethod
    def start(cls, saga_type: str, *, deadline: datetime | None = None) -> SagaContext:
        """A context for a new saga: a fresh saga id, no cause, no steps."""
        return cls(saga_id=uuid.uuid4(), saga_type=saga_type, deadline=deadline)

    def is_past_deadline(self, now: datetime | None = None) -> bool:
        """True when the saga carries a deadline and ``now`` is past it."""
        return self.deadline is not None and (now or utc_now()) > self.deadline

    def last_failure(self) -> StepRecord | None:
        """The most recent failed step, which is what the backward path is undoing."""
        return next((r for r in reversed(self.steps) if r.outcome is StepOutcome.FAILED), None)

    def completed_steps(self) -> tuple[str, ...]:
        """Names of the steps completed so far, in order."""
        return tuple(r.step for r in self.steps if r.outcome is StepOutcome.COMPLETED)

    def followed_by(
        self,
        caused_by: uuid.UUID,
        record: StepRecord | None,
        *,
        data: Mapping[str, JsonValue] | None = None,
    ) -> SagaContext:
        """The context of an event caused by ``caused_by``, with ``record`` appended and
        ``data`` added to the saga's data bag."""
        steps = (*self.steps, record) if record is not None else self.steps
        update: dict[str, Any] = {"causation_id": caused_by, "steps": steps}
        if data:
            merged = {**self.data, **data}
            check_data(merged)
            update["data"] = merged
        return self.model_copy(update=update)


def check_data(data: Mapping[str, Any]) -> None:
    """Raise ValueError when ``data`` is over the data bag's bounds or not JSON."""
    if len(data) > DATA_MAX_KEYS:
        raise ValueError(f"the saga's data holds at most {DATA_MAX_KEYS} keys, not {len(data)}")
    size = len(json.dumps(data, separators=(",", ":")).encode())
    if size > DATA_MAX_BYTES:
        raise ValueError(
            f"the saga's data holds at most {DATA_MAX_BYTES} bytes of JSON, not {size}: keep "
            "what later steps need (ids, amounts), and the rest in your own tables"
        )


@dataclasses.dataclass(slots=True, eq=False)
class DeliveryScope:
    """What sagakit knows about the delivery a task is handling: one object per delivery.

    ``SagaMiddleware`` makes one as a delivery arrives and enters it (``with scope:``) around
    everything that handles it; the dispatcher fills in the saga once the body is valid.

    Attributes:
        message: The delivery, as FastStream gives it (None outside a delivery).
        began: The handler began: a failure from now on is the service's, not the message's.
        saga: The saga of the event, once its body was validated.
        event_type: The event type, for log lines.
        step: The step, compensation or reaction handling it, for log lines.
        held: Ids of the outbox rows this delivery wrote, held from the relay loop until the
            delivery is done with them (published, or left to the loop).
    """

    message: Any = None
    began: bool = False
    saga: SagaContext | None = None
    event_type: str | None = None
    step: str | None = None
    held: list[str] = dataclasses.field(default_factory=list)
    _token: Token[DeliveryScope | None] | None = dataclasses.field(
        default=None, init=False, repr=False
    )

    @property
    def headers(self) -> Mapping[str, Any]:
        """The delivery's headers: where its trace (the parent of the step's span) comes from."""
        return self.message.headers if self.message is not None else {}

    def __enter__(self) -> DeliveryScope:
        self._token = _scope.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _scope.reset(self._token)
            self._token = None


_scope: ContextVar[DeliveryScope | None] = ContextVar("sagakit_delivery", default=None)


def current_scope() -> DeliveryScope | None:
    """The delivery being handled in this task, if any."""
    return _scope.get()


def current_saga() -> SagaContext | None:
    """The SagaContext of the event being handled in this task, if any."""
    scope = _scope.get()
    return scope.saga if scope is not None else None


@contextlib.contextmanager
def saga_scope(context: SagaContext) -> Iterator[SagaContext]:
    """Make ``context`` the current saga for the duration of the block.

    For code outside a delivery (a script, a test); inside one, the rest of the delivery's
    scope is kept.
    """
    outer = _scope.get()
    scope = DeliveryScope(saga=context)
    if outer is not None:
        scope = dataclasses.replace(outer, saga=context)
    with scope:
        yield context
