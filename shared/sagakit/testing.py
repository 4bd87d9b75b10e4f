"""In-memory testing of participants: FastStream's TestRabbitBroker plus saga-aware helpers.

Example:
    ```python
    async with ParticipantHarness(create_service(settings)) as harness:
        created = harness.start_saga(order)
        await harness.publish(created)
        assert harness.emitted_types == ["inventory.reserved"]
    ```
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from faststream.rabbit import RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from ._app import SagaService, prepare_store
from ._context import SagaContext, StepOutcome, StepRecord, utc_now
from ._envelope import Envelope, EventPayload
from ._runtime import _json_properties
from ._topology import REASON_HEADER
from ._tracing import current_trace_headers

__all__ = ["ParkedMessage", "ParticipantHarness"]


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """A message the participant moved to its dead-letter queue."""

    reason: str
    body: bytes
    headers: dict[str, Any]


@dataclass
class ParticipantHarness:
    """Runs one SagaService on an in-memory broker and records what it emits and parks.

    Args:
        service: The service under test; point its settings at a throwaway database.
    """

    service: SagaService
    emitted: list[Envelope[Any]] = field(default_factory=list, init=False)
    parked: list[ParkedMessage] = field(default_factory=list, init=False)
    _published_ids: set[uuid.UUID] = field(default_factory=set, init=False)
    _test_broker: TestRabbitBroker | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        runtime = self.service.runtime
        spec = runtime.spec

        @self.service.broker.subscriber(
            RabbitQueue(f"sagakit.testing.{runtime.name}.events", routing_key="#"),
            runtime.exchange,
        )
        async def record_event(message: RabbitMessage) -> None:
            event_type = str(message.raw_message.routing_key)
            if event_type not in spec.events:
                return
            model = spec.model_for(event_type)
            try:
                envelope = Envelope[model].model_validate_json(message.body)  # type: ignore[valid-type]
            except ValidationError:
                return  # the test's own bad input, not something the service emitted
            if envelope.event_id not in self._published_ids:
                self.emitted.append(envelope)

        @self.service.broker.subscriber(
            RabbitQueue(f"sagakit.testing.{runtime.name}.dlq"),
            runtime.topology.dead_letter_exchange(),
        )
        async def record_parked(message: RabbitMessage) -> None:
            headers = dict(message.headers)
            reason = str(headers.get(REASON_HEADER, ""))
            self.parked.append(ParkedMessage(reason, message.body, headers))

    async def __aenter__(self) -> ParticipantHarness:
        await prepare_store(self.service.runtime.participant, self.service.store)
        self._test_broker = TestRabbitBroker(self.service.broker)
        await self._test_broker.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._test_broker is not None
        await self._test_broker.__aexit__(exc_type, exc, tb)
        await self.service.store.dispose()

    @property
    def emitted_types(self) -> list[str]:
        """The types of the emitted events, in order."""
        return [e.event_type for e in self.emitted]

    def start_saga(
        self, payload: EventPayload, *, deadline: datetime | None = None, producer: str = "test"
    ) -> Envelope[Any]:
        """The start event of a new saga, as a client would publish it."""
        context = SagaContext.start(self.service.runtime.spec.saga_type, deadline=deadline)
        return Envelope.new(payload, context=context, producer=producer)

    def event_after(
        self,
        cause: Envelope[Any],
        payload: EventPayload,
        *,
        producer: str,
        step: str | None = None,
        outcome: StepOutcome = StepOutcome.COMPLETED,
        reason: str | None = None,
    ) -> Envelope[Any]:
        """The event ``producer`` would emit after ``cause``, recording ``step`` if given."""
        record = (
            StepRecord(
                step=step, participant=producer, outcome=outcome, at=utc_now(), reason=reason
            )
            if step is not None
            else None
        )
        context = cause.context.followed_by(cause.event_id, record)
        return Envelope.new(payload, context=context, producer=producer)

    async def publish(self, envelope: Envelope[Any]) -> None:
        """Publish ``envelope`` on the flow exchange exactly as it goes on the wire."""
        self._published_ids.add(envelope.event_id)
        await self.service.broker.publish(
            envelope.encode(),
            exchange=self.service.runtime.exchange,
            routing_key=envelope.event_type,
            headers={**envelope.amqp_headers(), **current_trace_headers()},
            **_json_properties(envelope),
        )

    async def publish_raw(
        self, body: bytes, *, routing_key: str, headers: dict[str, Any] | None = None
    ) -> None:
        """Publish arbitrary bytes on the flow exchange (for bad-input tests)."""
        await self.service.broker.publish(
            body, exchange=self.service.runtime.exchange, routing_key=routing_key, headers=headers
        )
