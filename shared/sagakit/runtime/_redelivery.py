"""Sending a delivery elsewhere: to a delay queue (retry), to the dead-letter queue (park), or
back to the end of its own queue (hand back). Each is a confirmed publish of the same body,
then an ack of the original, so that the message is never in neither place."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aio_pika
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker, RabbitExchange

from sagakit._context import utc_now
from sagakit._envelope import SAGA_ID_HEADER
from sagakit.broker._headers import bounded_headers, frame_max_of, header_budget
from sagakit.broker._topology import (
    ATTEMPT_HEADER,
    DEATH_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_ERROR_HEADER,
    OPERATOR_CANCEL_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYS_HEADER,
    ParticipantTopology,
    retry_queue_name,
)
from sagakit.observability._metrics import DEAD_LETTERED, HANDED_BACK, HEADERS_DROPPED, RETRIES
from sagakit.runtime._participant import Subscription
from sagakit.runtime._settings import ParticipantSettings

logger = logging.getLogger("sagakit.runtime")

# A probe of the store or the broker that takes longer than this has failed; so does a
# hand back.
PROBE_TIMEOUT_SECONDS = 5.0
# The header a quorum queue adds on redelivery; a handed-back copy starts afresh.
_DELIVERY_COUNT_HEADER = "x-delivery-count"

# A republished message (retry, park) carries these of its headers first, before any other
# header of the message's own: sagakit and the tracing read them.
_KEPT_HEADERS = (
    SAGA_ID_HEADER,
    "traceparent",
    "tracestate",
    "baggage",
    OPERATOR_CANCEL_HEADER,
    ATTEMPT_HEADER,
    REPLAYS_HEADER,
    DEATH_HEADER,
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
)
# Never carried over: what only a park may say, and the broker's count of the old queue.
_LEFT_OUT = (REASON_HEADER, ORIGIN_QUEUE_HEADER, PARKED_AT_HEADER, _DELIVERY_COUNT_HEADER)
_MAX_REASON_CHARS = 1000
_MAX_TIME_CHARS = 64


class Redelivery:
    """Retries, parks and hands back one participant's deliveries."""

    def __init__(
        self,
        name: str,
        *,
        broker: RabbitBroker,
        topology: ParticipantTopology,
        settings: ParticipantSettings,
    ) -> None:
        self.name = name
        self.broker = broker
        self.topology = topology
        self.settings = settings

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt``: exponential, capped, with jitter."""
        ceiling = min(
            self.settings.retry_max_delay_seconds,
            self.settings.retry_base_delay_seconds * 2 ** (attempt - 1),
        )
        return random.uniform(ceiling / 2, ceiling)

    async def retry(self, sub: Subscription, message: Any, attempt: int, error: str) -> None:
        """Send ``message`` through its delay queue as retry ``attempt``, then ack it."""
        await self._republish(
            message,
            exchange=self.topology.retry_exchange(),
            routing_key=retry_queue_name(sub.queue),
            headers={ATTEMPT_HEADER: attempt, LAST_ERROR_HEADER: error[:300]},
            expiration=timedelta(seconds=self.backoff(attempt)),
        )
        RETRIES.labels(self.name, sub.name).inc()

    async def park(
        self, message: StreamMessage[Any], *, queue: str, reason: str, kind: str
    ) -> None:
        """Move ``message`` to the dead-letter queue with ``reason`` in its headers, then ack.

        When the message's own headers do not fit beside sagakit's in one frame, the
        reason says how many were dropped (``headers_too_large: N headers dropped``).
        """
        reason = reason[:_MAX_REASON_CHARS]
        await self._republish(
            message,
            exchange=self.topology.dead_letter_exchange(),
            routing_key=queue,
            headers={
                REASON_HEADER: reason,
                ORIGIN_QUEUE_HEADER: queue,
                PARKED_AT_HEADER: utc_now().isoformat(),
            },
            reason=reason,
        )
        DEAD_LETTERED.labels(self.name, kind).inc()

    async def hand_back(self, sub: Subscription, message: Any) -> bool:
        """Put a held delivery back at the end of its queue, then ack it: a publish, not a
        requeue, so the quorum queue's delivery count does not grow. False if it failed."""
        raw = message.raw_message
        original: Mapping[str, Any] = getattr(raw, "headers", None) or message.headers or {}
        handed = _copy(message)
        budget = header_budget(
            handed.properties,
            body_size=handed.body_size,
            frame_max=frame_max_of(getattr(self.broker, "_connection", None)),
        )
        # The same headers (as many as the frame takes, as a retry carries them), without
        # the broker's count of deliveries: the copy starts afresh.
        handed.headers = bounded_headers(
            original,
            {},
            budget=budget,
            keep_first=_KEPT_HEADERS,
            leave_out=(_DELIVERY_COUNT_HEADER,),
        ).headers
        try:
            await self.broker.publish(
                handed,
                exchange=self.topology.retry_exchange(),
                routing_key=sub.queue,
                mandatory=True,
                timeout=PROBE_TIMEOUT_SECONDS,
            )
            await message.ack()
        except Exception as exc:
            logger.warning("could not hand back a held delivery (%s); holding it on", exc)
            return False
        HANDED_BACK.labels(self.name).inc()
        logger.info("held delivery %s handed back to %s", message.message_id, sub.queue)
        return True

    def origin_queue(self, message: StreamMessage[Any]) -> str:
        """The work queue a raw message came from (its routing key names it or its type)."""
        routing_key = str(getattr(message.raw_message, "routing_key", "") or "")
        if routing_key.startswith(f"{self.name}."):
            return routing_key
        return self.topology.work_queue(routing_key or "unknown").name

    async def _republish(
        self,
        message: Any,
        *,
        exchange: RabbitExchange,
        routing_key: str,
        headers: Mapping[str, Any],
        expiration: timedelta | None = None,
        reason: str | None = None,
    ) -> None:
        # The same body and properties as they came on the wire, the given headers added,
        # confirmed; then the original is acked, so the message is never in neither place.
        # The header table is bounded so that the broker always accepts the publish.
        raw = message.raw_message
        original: Mapping[str, Any] = getattr(raw, "headers", None) or message.headers or {}
        added = dict(headers)
        added[FIRST_FAILURE_HEADER] = _first_failure(original)
        republished = _copy(message, expiration=expiration)
        budget = header_budget(
            republished.properties,
            body_size=republished.body_size,
            frame_max=frame_max_of(getattr(self.broker, "_connection", None)),
        )
        bounded = bounded_headers(
            original, added, budget=budget, keep_first=_KEPT_HEADERS, leave_out=_LEFT_OUT
        )
        if bounded.reason is not None:
            logger.warning("message %.80r: %s", getattr(raw, "message_id", None), bounded.note)
            HEADERS_DROPPED.labels(self.name).inc(len(bounded.dropped))
            if reason is not None:
                suffix = f"; {bounded.reason}"
                kept = reason[: _MAX_REASON_CHARS - len(suffix)]
                bounded.headers[REASON_HEADER] = f"{kept}{suffix}"
        republished.headers = bounded.headers
        await self.broker.publish(
            republished, exchange=exchange, routing_key=routing_key, mandatory=True
        )
        await message.ack()


def _copy(message: Any, *, expiration: timedelta | None = None) -> aio_pika.Message:
    """The body and properties of ``message`` as they came on the wire, persistent; no headers."""
    raw = message.raw_message
    return aio_pika.Message(
        bytes(message.body),
        content_type=getattr(raw, "content_type", None),
        content_encoding=getattr(raw, "content_encoding", None),
        correlation_id=getattr(raw, "correlation_id", None),
        message_id=getattr(raw, "message_id", None),
        timestamp=getattr(raw, "timestamp", None),
        type=getattr(raw, "type", None),
        app_id=getattr(raw, "app_id", None),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=expiration,
    )


def _first_failure(headers: Mapping[str, Any]) -> str:
    """The first failure's time the message carries, or now for its first failure."""
    value = headers.get(FIRST_FAILURE_HEADER)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str) and 0 < len(value) <= _MAX_TIME_CHARS:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass  # not a time sagakit wrote: a first failure is now
        else:
            return value
    return utc_now().isoformat()


def attempt_of(headers: Mapping[str, Any]) -> int:
    """The retry attempt a delivery carries: 0 on its first delivery."""
    try:
        return max(0, int(headers.get(ATTEMPT_HEADER, 0) or 0))
    except (TypeError, ValueError):
        return 0
