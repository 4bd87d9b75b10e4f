"""Reading, replaying and purging the participants' dead-letter queues over AMQP.

Listing takes every message without acking it and then closes the channel, which returns
them all to the queue: no management plugin is needed and nothing is lost if the command
dies half-way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from ._client import connect
from ._errors import BrokerUnavailable
from ._topology import (
    ATTEMPT_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_ERROR_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    dead_letter_queue_name,
)

_DEAD_LETTER_HEADERS = (
    REASON_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    FIRST_FAILURE_HEADER,
    ATTEMPT_HEADER,
    LAST_ERROR_HEADER,
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    "x-delivery-count",
)


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """One message in a dead-letter queue, with why and where from."""

    service: str
    id: str
    reason: str
    saga_id: str
    event_type: str
    first_failure_at: str
    origin_queue: str
    body: bytes

    def as_dict(self) -> dict[str, str]:
        """A JSON-friendly view (without the body)."""
        return {
            "service": self.service,
            "id": self.id,
            "reason": self.reason,
            "saga_id": self.saga_id,
            "event_type": self.event_type,
            "first_failure_at": self.first_failure_at,
            "origin_queue": self.origin_queue,
        }


def _parked(service: str, message: AbstractIncomingMessage) -> ParkedMessage:
    headers: dict[str, Any] = dict(message.headers or {})
    # Parked by sagakit: our headers. Dead-lettered by the broker (delivery limit): x-death.
    reason = headers.get(REASON_HEADER) or (
        f"broker: {headers.get('x-first-death-reason', 'unknown')}"
    )
    origin = headers.get(ORIGIN_QUEUE_HEADER) or headers.get("x-first-death-queue") or ""
    first = headers.get(FIRST_FAILURE_HEADER) or headers.get(PARKED_AT_HEADER) or ""
    return ParkedMessage(
        service=service,
        id=message.message_id or hashlib.sha256(message.body).hexdigest()[:16],
        reason=_text(reason),
        saga_id=_text(headers.get("x-saga-id") or message.correlation_id or ""),
        event_type=_text(message.type or message.routing_key or ""),
        first_failure_at=_text(first),
        origin_queue=_text(origin),
        body=message.body,
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class DeadLetters:
    """The dead-letter queues of some participants, on one broker.

    Args:
        url: The broker URL.
        services: Participant names whose ``<name>.dlq`` queues to work on.
    """

    def __init__(self, url: str, *, services: Sequence[str]) -> None:
        self._url = url
        self._services = tuple(services)
        self._connection: AbstractRobustConnection | None = None

    async def __aenter__(self) -> DeadLetters:
        try:
            # Every node of a cluster URL, the first that answers (sagakit._client.connect).
            self._connection = await connect(self._url, connect_timeout=5)
        except Exception as exc:
            raise BrokerUnavailable(f"no RabbitMQ answered: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def parked(self) -> list[ParkedMessage]:
        """Every parked message, oldest first per service; nothing is removed."""
        parked: list[ParkedMessage] = []
        for service in self._services:
            channel = await self._channel()
            try:
                for message in await self._take_all(channel, service):
                    parked.append(_parked(service, message))
            finally:
                await channel.close()
        return parked

    async def replay(self, ids: Iterable[str] | None = None) -> list[ParkedMessage]:
        """Send parked messages (all, or those with ``ids``) back to their origin queues."""
        wanted = set(ids) if ids is not None else None
        replayed: list[ParkedMessage] = []
        for service in self._services:
            channel = await self._channel(confirms=True)
            try:
                for message in await self._take_all(channel, service):
                    entry = _parked(service, message)
                    if (wanted is not None and entry.id not in wanted) or not entry.origin_queue:
                        continue
                    await channel.default_exchange.publish(
                        _fresh_copy(message), routing_key=entry.origin_queue, mandatory=True
                    )
                    await message.ack()
                    replayed.append(entry)
            finally:
                await channel.close()
        return replayed

    async def purge(self) -> int:
        """Delete every parked message; returns how many."""
        removed = 0
        for service in self._services:
            channel = await self._channel()
            try:
                queue = await channel.declare_queue(dead_letter_queue_name(service), passive=True)
                result = await queue.purge()
                removed += int(getattr(result, "message_count", 0) or 0)
            except aio_pika.exceptions.ChannelClosed:
                continue
            finally:
                if not channel.is_closed:
                    await channel.close()
        return removed

    async def _channel(self, *, confirms: bool = False) -> AbstractChannel:
        assert self._connection is not None
        return await self._connection.channel(publisher_confirms=confirms)

    async def _take_all(
        self, channel: AbstractChannel, service: str
    ) -> list[AbstractIncomingMessage]:
        try:
            queue = await channel.declare_queue(dead_letter_queue_name(service), passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return []  # the service never started here: it has no dead-letter queue yet
        taken: list[AbstractIncomingMessage] = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            taken.append(message)
        return taken


def _fresh_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEAD_LETTER_HEADERS}
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
