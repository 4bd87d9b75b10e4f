"""The events a participant emits: envelopes built from the incoming one, written to the
outbox in the handler's transaction, never larger than a consumer takes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from faststream.rabbit import RabbitBroker
from pydantic import BaseModel, ValidationError

from sagakit._context import StepOutcome, StepRecord, current_scope, utc_now
from sagakit._envelope import Envelope, EventPayload, derived_event_id
from sagakit._exceptions import HandlerError
from sagakit.broker._headers import DEFAULT_FRAME_MAX, frame_max_of
from sagakit.observability._tracing import current_trace_headers
from sagakit.runtime._outcome import Handled, Outcome
from sagakit.runtime._participant import Subscription
from sagakit.runtime._relay import OutboxRelay
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._recorder import OutboxRow, StepStatus, Transaction
from sagakit.store._store import Store

# Properties besides headers (ids, type, content type, flags) take less than this.
_PROPERTIES_ALLOWANCE = 512


class EventTooLarge(Exception):
    """An event the handling would emit is larger than any consumer takes."""

    def __init__(self, event_type: str, size: int, limit: int, what: str) -> None:
        super().__init__(f"{event_type} would be {size} bytes ({what}), over the limit of {limit}")
        self.event_type = event_type


class Events:
    """Builds a participant's events and writes them to its outbox."""

    def __init__(
        self,
        *,
        name: str,
        spec: SagaSpec,
        store: Store,
        relay: OutboxRelay,
        broker: RabbitBroker,
        max_message_bytes: int,
    ) -> None:
        self.name = name
        self.spec = spec
        self.store = store
        self.relay = relay
        self.broker = broker
        self.max_message_bytes = max_message_bytes

    def record(self, step: StepSpec, outcome: StepOutcome, reason: str | None = None) -> StepRecord:
        """This participant's entry in the saga's history for ``step``."""
        return StepRecord(
            step=step.name, participant=self.name, outcome=outcome, at=utc_now(), reason=reason
        )

    def expect(self, result: object, event_type: str, sub: Subscription) -> None:
        """Refuse a handler's result that is not the payload of ``event_type``: a bug."""
        expected = self.spec.model_for(event_type)
        if not isinstance(result, expected):
            raise HandlerError(
                f"{sub.kind.value} handler of {sub.name!r} returned {type(result).__name__},"
                f" expected {expected.__name__} ({event_type})"
            )

    def _carried(self, envelope: Envelope[Any]) -> dict[str, Any]:
        carry = self.spec.start_field
        if carry is None:
            return {}
        if envelope.event_type == self.spec.start_event:
            return {carry: envelope.payload.model_dump(mode="json")}
        value = getattr(envelope.payload, carry, None)
        return {carry: value.model_dump(mode="json")} if isinstance(value, BaseModel) else {}

    def system_payload(
        self, event_type: str, envelope: Envelope[Any], **fields: Any
    ) -> EventPayload:
        """A payload sagakit writes itself (a failure, a no-op compensation, a cancellation):
        what the saga carries, plus ``fields``."""
        model = self.spec.model_for(event_type)
        try:
            return model.model_validate({**self._carried(envelope), **fields})
        except ValidationError as error:
            # The spec checks what it can when built; what is left is a bug, not a retry.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]
            )
            raise HandlerError(
                f"sagakit cannot build {model.__name__} ({event_type}): {problems}"
            ) from error

    def envelope(
        self,
        payload: EventPayload,
        *,
        cause: Envelope[Any],
        record: StepRecord | None,
        data: Mapping[str, Any] | None = None,
    ) -> Envelope[Any]:
        """The envelope of ``payload``, caused by ``cause``, with ``data`` added to the
        saga's data bag; its id is derived, so that the same event announced again has the
        same id."""
        context = cause.context.followed_by(cause.event_id, record, data=data)
        return Envelope.new(
            payload,
            context=context,
            producer=self.name,
            event_id=derived_event_id(context.saga_id, self.name, payload.event_type),
        )

    def cancellation(self, cause: Envelope[Any], failed_step: str, reason: str) -> Envelope[Any]:
        """The saga's cancelled event, after ``cause``."""
        payload = self.system_payload(
            self.spec.cancelled_event, cause, failed_step=failed_step, reason=reason
        )
        return self.envelope(payload, cause=cause, record=None)

    async def emit(
        self,
        transaction: Transaction,
        events: Sequence[Envelope[Any]],
        *,
        step: str,
        status: StepStatus,
        reason: str | None = None,
    ) -> list[OutboxRow]:
        """Write ``events`` to the outbox and move ``step`` to ``status`` in ``transaction``
        (one statement where the store allows); the events are held from the relay loop
        until the delivery is done with them."""
        trace_headers = current_trace_headers()
        rows = [
            OutboxRow(
                event_id=str(e.event_id),
                saga_id=str(e.context.saga_id),
                routing_key=e.event_type,
                body=e.encode().decode(),
                properties=json_properties(e),
                headers={**e.amqp_headers(), **trace_headers},
            )
            for e in events
        ]
        for row in rows:
            self._check_size(row)
        queued = await self.store.finish(
            transaction,
            saga_id=events[0].context.saga_id,
            step=step,
            status=status,
            reason=reason,
            rows=rows,
        )
        self._hold(row.event_id for row in queued)
        return queued

    async def duplicate(self, transaction: Transaction, envelope: Envelope[Any]) -> Handled:
        """A duplicate delivery, with the saga's events still unmarked: when the first delivery
        committed and then died before publishing (or before its marks), this one publishes
        them now, instead of the relay loop later. Rows another delivery holds are left to it.
        """
        rows = await self.store.unsent_of_saga(transaction, saga_id=envelope.context.saga_id)
        rows = [row for row in rows if not self.relay.in_hand(row.event_id)]
        self._hold(row.event_id for row in rows)
        return Handled(Outcome.DUPLICATE, rows)

    def _hold(self, event_ids: Iterable[str]) -> None:
        scope = current_scope()
        if scope is None:
            return
        ids = list(event_ids)
        if ids:
            self.relay.hold(ids)
            scope.held.extend(ids)

    def _check_size(self, row: OutboxRow) -> None:
        """Refuse, before anything commits, an event no consumer could take."""
        body = len(row.body) if row.body.isascii() else len(row.body.encode())
        headers = _table_size(row.headers)
        limit = self.max_message_bytes
        if body + headers > limit:
            raise EventTooLarge(
                row.routing_key, body + headers, limit, f"{body} of body, {headers} of headers"
            )
        # A message's properties and headers travel in one frame.
        frame_max = frame_max_of(getattr(self.broker, "_connection", None)) or DEFAULT_FRAME_MAX
        if headers + _PROPERTIES_ALLOWANCE > frame_max:
            raise EventTooLarge(
                row.routing_key, headers, frame_max, "headers, over the broker's frame size"
            )


def json_properties(envelope: Envelope[Any]) -> dict[str, Any]:
    """The AMQP properties of ``envelope`` as the outbox stores them (JSON-able)."""
    props = envelope.amqp_properties()
    for key in ("persist", "mandatory", "timestamp"):
        props.pop(key, None)
    return props


def _table_size(headers: Mapping[str, str]) -> int:
    """Bytes of an AMQP field table of short string keys and long string values."""
    return 4 + sum(
        1 + len(key.encode()) + 1 + 4 + len(str(value).encode()) for key, value in headers.items()
    )
