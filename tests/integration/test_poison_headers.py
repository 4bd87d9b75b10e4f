"""Poison headers on the real broker: messages with the largest header tables a client may
publish never make a republish (retry, park, replay) exceed the broker's frame limit.

Were they copied whole, the broker would close the service's whole connection
(``frame_too_large``), the message would come back, and every valid saga would wait
behind it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from pamqp import encode
from pamqp.header import ContentHeader
from prometheus_client import REGISTRY
from sagakit import Envelope, SagaContext, utc_now
from sagakit.broker import ORIGIN_QUEUE_HEADER, PARKED_AT_HEADER, REASON_HEADER
from sagakit.broker._headers import frame_max_of
from sagakit.client import DeadLetters, ParkedMessage
from sagakit.runtime._events import json_properties as _json_properties

from .probe_flow import Behaviour, Started, Watch, probe_services, running

pytestmark = pytest.mark.integration


def _names(prefix: str) -> Iterator[str]:
    number = 0
    while True:
        yield f"{prefix}{number:05d}"
        number += 1


def _fill(
    message: aio_pika.Message, frame_max: int, value: Callable[[int], Any], names: Iterator[str]
) -> aio_pika.Message:
    """``message`` with as many more headers as one frame takes: the client's limit."""
    headers = dict(message.headers)
    properties = message.properties
    properties.headers = headers or {}
    used = len(ContentHeader(0, message.body_size, properties).marshal())
    limit = frame_max - 8  # the frame's own bytes
    while True:
        key = next(names)
        item = value(limit - used)
        size = len(encode.short_string(key)) + len(encode.encode_table_value(item))
        if used + size > limit:
            break
        headers[key] = item
        used += size
    message.headers = headers
    assert len(ContentHeader(0, message.body_size, message.properties).marshal()) <= limit
    return message


def many_small(message: aio_pika.Message, frame_max: int) -> aio_pika.Message:
    """Thousands of small headers (about 10,000 at the default frame_max)."""
    return _fill(message, frame_max, lambda room: "v", _names("h"))


def a_few_big(message: aio_pika.Message, frame_max: int) -> aio_pika.Message:
    """Four big string headers, then small ones up to the limit."""
    big = iter(range(4))

    def value(room: int) -> str:
        return "x" * min(32_000, room - 64) if next(big, None) is not None else "v"

    return _fill(message, frame_max, value, _names("big-"))


def _started(saga: SagaContext, *, extra: dict[str, Any] | None = None) -> aio_pika.Message:
    envelope = Envelope.new(Started(subject="poison"), context=saga, producer="test")
    props = _json_properties(envelope)
    return aio_pika.Message(
        envelope.encode(),
        message_id=props["message_id"],
        correlation_id=props["correlation_id"],
        type=props["message_type"],
        content_type=props["content_type"],
        headers={**envelope.amqp_headers(), **(extra or {})},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _schema_invalid(saga: SagaContext) -> aio_pika.Message:
    body = {"event_type": "probe.started", "context": {"saga_id": str(saga.saga_id)}}
    return aio_pika.Message(
        json.dumps(body).encode(),
        message_id=str(uuid.uuid4()),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _watch_connection(connection: AbstractRobustConnection, closed: list[str], name: str) -> None:
    connection.close_callbacks.add(lambda *_: closed.append(f"{name}: closed"))
    connection.reconnect_callbacks.add(lambda *_: closed.append(f"{name}: reconnected"))


async def _parked(dead_letters: DeadLetters, sagas: list[SagaContext]) -> list[ParkedMessage]:
    wanted = {str(saga.saga_id) for saga in sagas}
    async with asyncio.timeout(30):
        while True:
            entries = [e for e in await dead_letters.parked() if e.saga_id in wanted]
            if len(entries) >= len(wanted):
                return entries
            await asyncio.sleep(0.1)


def _dropped_headers() -> float:
    value = REGISTRY.get_sample_value(
        "sagakit_republish_headers_dropped_total", {"participant": "alpha"}
    )
    return value or 0.0


@pytest.mark.timeout(180)
async def test_header_tables_up_to_the_clients_limit_never_close_the_services_connection(
    rabbitmq_url: str, tmp_path: object
) -> None:
    poisoned_bad = [SagaContext.start("probe") for _ in range(2)]  # parked as bad input
    retried = [SagaContext.start("probe") for _ in range(2)]  # retried, then done
    exhausted = SagaContext.start("probe")  # retried until the budget is spent
    replayed = SagaContext.start("probe")  # parked already, replayed by the tool
    behaviour = Behaviour(
        script={
            **{str(saga.saga_id): {"first": ["transient", "transient"]} for saga in retried},
            str(exhausted.saga_id): {"first": ["transient"] * 3},
        }
    )
    services = probe_services(rabbitmq_url, str(tmp_path), behaviour)
    closed: list[str] = []
    dropped_before = _dropped_headers()
    async with (
        running(services),
        Watch(rabbitmq_url) as watch,
        DeadLetters(rabbitmq_url, services=["alpha", "beta"]) as dead_letters,
    ):
        await dead_letters.purge()
        transports = []
        for service in services:
            connection = service.broker._connection
            assert connection is not None
            _watch_connection(connection, closed, service.runtime.name)
            transports.append(connection.transport)
        frame_max = frame_max_of(services[0].broker._connection)
        assert frame_max is not None

        fills = (many_small, a_few_big)
        for saga, fill in zip(poisoned_bad, fills, strict=True):
            await watch.exchange.publish(
                fill(_schema_invalid(saga), frame_max), routing_key="probe.started"
            )
        for saga, fill in zip(retried, fills, strict=True):
            message = fill(_started(saga), frame_max)
            await watch.exchange.publish(message, routing_key="probe.started")
        await watch.exchange.publish(
            many_small(_started(exhausted), frame_max), routing_key="probe.started"
        )
        # As if parked before: sagakit's headers and the largest table on top of them, so
        # that the replay's own headers would not fit either.
        parked_before = _started(
            replayed,
            extra={
                REASON_HEADER: "compensation_failed: was down",
                ORIGIN_QUEUE_HEADER: "alpha.probe.started",
                PARKED_AT_HEADER: utc_now().isoformat(),
            },
        )
        dlx = await watch.channel.get_exchange("alpha.dlx", ensure=False)
        await dlx.publish(many_small(parked_before, frame_max), routing_key="alpha.probe.started")

        entries = await _parked(dead_letters, [*poisoned_bad, replayed])
        for saga in retried:
            assert (await watch.saga_until(saga, "probe.finished"))[-1] == "probe.finished"
        failed = await watch.saga_until(exhausted, "probe.cancelled")
        assert failed == ["probe.started", "alpha.failed", "probe.cancelled"]
        assert [
            e["payload"]["reason"]
            for e in watch.events
            if e["event_type"] == "alpha.failed"
            and e["context"]["saga_id"] == str(exhausted.saga_id)
        ] == ["retries_exhausted"]

        by_saga = {entry.saga_id: entry for entry in entries}
        for saga in poisoned_bad:
            entry = by_saga[str(saga.saga_id)]
            assert entry.reason.startswith("schema_invalid"), entry.reason
            assert "headers_too_large" in entry.reason_codes, entry.reason
            assert "x-saga-headers-dropped" in entry.headers
            assert len(entry.reason) <= 1000
        assert _dropped_headers() > dropped_before  # the retries dropped headers too

        # The tool's replay bounds the table too: the message reaches its work queue.
        [again] = await dead_letters.replay([by_saga[str(replayed.saga_id)].id])
        assert again.origin_queue == "alpha.probe.started"
        assert (await watch.saga_until(replayed, "probe.finished"))[-1] == "probe.finished"

        # A valid saga after all of them goes through at once.
        after = SagaContext.start("probe")
        await watch.start(context=after)
        assert (await watch.saga_until(after, "probe.finished"))[-1] == "probe.finished"

        assert closed == []
        for service, transport in zip(services, transports, strict=True):
            connection = service.broker._connection
            assert connection is not None
            assert connection.transport is transport
        # The session's vhost is shared with the other integration tests, which count parked
        # messages: leave nothing behind.
        await dead_letters.purge()
