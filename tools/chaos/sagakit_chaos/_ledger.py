"""The independent ledger: every message published to the flow's exchange, as the broker saw it.

A durable quorum queue of its own, bound with ``#`` to the flow exchange and declared before
the first saga starts, on a connection straight to the broker (never through the fault
proxy). It knows nothing of the services: it records what reached the exchange, and the
audit compares that with what each service says it did.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from sagakit import SagaSpec

logger = logging.getLogger("chaos.ledger")

LEDGER_QUEUE = "chaos.ledger"


@dataclass(frozen=True, slots=True)
class Seen:
    """One message as it first reached the ledger; enough to publish an exact copy."""

    message_id: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None
    type: str | None
    content_type: str | None
    event_type: str | None
    event_id: str | None
    saga_id: str | None


def _decode(body: bytes) -> tuple[str | None, str | None, str | None]:
    try:
        data = json.loads(body)
        event_type = data["event_type"]
        event_id = data["event_id"]
        saga_id = data["context"]["saga_id"]
    except (ValueError, TypeError, KeyError):
        return None, None, None
    if not all(isinstance(value, str) for value in (event_type, event_id, saga_id)):
        return None, None, None
    return event_type, event_id, saga_id


class Ledger:
    """Records every message on the flow exchange; acks each only once it is recorded.

    Args:
        url: The broker, directly (not through the proxy).
        spec: The flow: its exchange and terminal events.
    """

    def __init__(self, url: str, *, spec: SagaSpec) -> None:
        self.url = url
        self.spec = spec
        self.first: dict[str, Seen] = {}
        self.copies: Counter[str] = Counter()
        self.by_saga: dict[str, list[Seen]] = {}
        self.ended: set[str] = set()
        self.deliveries = 0
        self._terminal = spec.terminal_events()
        self._progress = asyncio.Event()
        self._last_arrival = 0.0
        self._connection: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None

    async def open(self) -> None:
        """Declare and bind the ledger's queue, then start recording."""
        self._connection = await aio_pika.connect_robust(self.url, timeout=10)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        exchange = await channel.declare_exchange(
            self.spec.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            LEDGER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message)
        self._queue = queue

    async def close(self) -> None:
        """Close the connection (the queue stays, with anything not yet recorded)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    def seen_events(self) -> list[Seen]:
        """Every event of a saga seen so far, in arrival order (first copies only)."""
        return [seen for seen in self.first.values() if seen.saga_id is not None]

    async def wait_progress(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until a terminal event arrives (True) or ``timeout`` passes (False)."""
        self._progress.clear()
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def drain(self, *, idle: float = 2.0, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Return once the queue is empty and nothing has arrived for ``idle`` seconds."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout
        assert self._connection is not None
        while loop.time() < give_up_at:
            channel = await self._connection.channel()
            try:
                declared = await channel.declare_queue(LEDGER_QUEUE, passive=True)
                waiting = declared.declaration_result.message_count or 0
            finally:
                await channel.close()
            if waiting == 0 and loop.time() - self._last_arrival >= idle:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the ledger did not drain within {timeout:g}s")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._record(message)
        self._last_arrival = asyncio.get_running_loop().time()
        await message.ack()

    def _record(self, message: AbstractIncomingMessage) -> None:
        self.deliveries += 1
        message_id = message.message_id or f"no-id:{hash(message.body)}"
        self.copies[message_id] += 1
        if message_id in self.first:
            return
        event_type, event_id, saga_id = _decode(message.body)
        routing_key = message.routing_key or ""
        # The wire contract: an event's message id is its event id and its routing key its
        # type. Anything else (a foreign or garbled message) is recorded but joins no saga.
        if event_type != routing_key or event_id != message_id:
            event_type = event_id = saga_id = None
        seen = Seen(
            message_id=message_id,
            routing_key=routing_key,
            body=message.body,
            headers=dict(message.headers or {}),
            correlation_id=message.correlation_id,
            type=message.type,
            content_type=message.content_type,
            event_type=event_type,
            event_id=event_id,
            saga_id=saga_id,
        )
        self.first[message_id] = seen
        if saga_id is None:
            return
        self.by_saga.setdefault(saga_id, []).append(seen)
        if event_type in self._terminal:
            self.ended.add(saga_id)
            self._progress.set()
