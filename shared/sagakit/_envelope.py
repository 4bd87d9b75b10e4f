"""The envelope every event travels in, and its mapping to AMQP properties and headers."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from sagakit._context import NAME_MAX_LENGTH, SagaContext, utc_now

SAGA_ID_HEADER = "x-saga-id"
CONTENT_TYPE = "application/json"

# Event ids are derived, not random: the same saga announcing the same event twice (a
# crash before the outbox row was marked sent, a repeated compensation request) yields the
# same id, so every consumer's inbox drops the second copy.
_EVENT_NAMESPACE = uuid.UUID("6f3c1a52-2b0e-4c43-9a55-1d2f8b7f9e10")


def derived_event_id(saga_id: uuid.UUID, producer: str, event_type: str) -> uuid.UUID:
    """The deterministic id of the event ``event_type`` that ``producer`` emits for a saga."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{saga_id}:{producer}:{event_type}")


class EventPayload(BaseModel):
    """Base of every event's own fields. Subclasses set ``event_type``.

    Unknown fields are ignored, so a producer may add optional fields without a new
    ``schema_version`` and older consumers keep working.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1


PayloadT = TypeVar("PayloadT", bound=EventPayload)


class Envelope(BaseModel, Generic[PayloadT]):
    """One event on the wire: identity, type, time, producer, saga context and payload."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID
    event_type: str = Field(min_length=1, max_length=200)
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    producer: str = Field(min_length=1, max_length=NAME_MAX_LENGTH)
    context: SagaContext
    payload: PayloadT

    @classmethod
    def new(
        cls,
        payload: PayloadT,
        *,
        context: SagaContext,
        producer: str,
        event_id: uuid.UUID | None = None,
    ) -> Envelope[PayloadT]:
        """Wrap ``payload`` for ``context``; the event id is random unless given."""
        parametrized: type[Envelope[PayloadT]] = Envelope[type(payload)]  # type: ignore[misc,assignment]
        return parametrized(
            event_id=event_id or uuid.uuid4(),
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=utc_now(),
            producer=producer,
            context=context,
            payload=payload,
        )

    def encode(self) -> bytes:
        """The JSON body of the AMQP message."""
        return self.model_dump_json().encode()

    def amqp_properties(self) -> dict[str, Any]:
        """Keyword arguments for ``RabbitBroker.publish`` that carry the wire contract."""
        return {
            "message_id": str(self.event_id),
            "correlation_id": str(self.context.saga_id),
            "message_type": self.event_type,
            "content_type": CONTENT_TYPE,
            "timestamp": self.occurred_at,
            "persist": True,
            "mandatory": True,
        }

    def amqp_headers(self) -> dict[str, str]:
        """Headers every event carries besides the W3C trace context."""
        return {SAGA_ID_HEADER: str(self.context.saga_id)}
