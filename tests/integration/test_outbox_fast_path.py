"""The outbox's fast path on SQLite and PostgreSQL, with a real broker: rows go out as
written, a re-announced event keeps its first body, and marks are grouped but never lost,
and a row whose mark could not be written is published again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import Channel, RabbitBroker
from sagakit.broker import flow_exchange
from sagakit.runtime import OutboxRelay
from sagakit.store import OutboxRow, Store

pytestmark = pytest.mark.integration


def _row(saga_id: str, n: int, body: str = "{}") -> OutboxRow:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{saga_id}/{n}"))
    return OutboxRow(
        event_id=event_id,
        saga_id=saga_id,
        routing_key="fast.path",
        body=body,
        properties={"message_id": event_id, "correlation_id": saga_id},
        headers={"x-saga-id": saga_id},
    )


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.create_schema()
    yield store
    await store.dispose()


async def test_queued_rows_come_back_as_they_will_be_published(store: Store) -> None:
    saga = str(uuid.uuid4())
    first = _row(saga, 1, '{"first": true}')
    async with store.write() as session:
        assert await store.finish(session, saga_id=saga, rows=[first, _row(saga, 2)]) == [
            first,
            _row(saga, 2),
        ]
    await store.mark_sent([first.event_id])
    # announced again with another body: the first body goes out, and the row is pending
    async with store.write() as session:
        [again] = await store.finish(
            session, saga_id=saga, rows=[_row(saga, 1, '{"second": true}')]
        )
    assert again.body == '{"first": true}'
    assert again.properties == first.properties
    assert again.headers == first.headers
    assert {r.event_id for r in await store.pending_outbox()} == {
        first.event_id,
        _row(saga, 2).event_id,
    }


@dataclass
class Wire:
    """A relay publishing to a fresh exchange, and a queue that receives all it publishes."""

    relay: OutboxRelay
    queue: aio_pika.abc.AbstractQueue

    async def received(self, count: int) -> list[AbstractIncomingMessage]:
        """The next ``count`` messages on the queue, acked."""
        messages: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(10):
            async with self.queue.iterator() as incoming:
                async for message in incoming:
                    await message.ack()
                    messages.append(message)
                    if len(messages) == count:
                        break
        return messages


@pytest.fixture
async def wire(store: Store, rabbitmq_url: str) -> AsyncIterator[Wire]:
    exchange = f"fast-path-{uuid.uuid4().hex[:8]}"
    broker = RabbitBroker(rabbitmq_url)
    relay = OutboxRelay(store, broker, flow_exchange(exchange), participant="test", interval=60)
    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(declared, routing_key="#")
        await broker.start()
        yield Wire(relay, queue)
    finally:
        await broker.stop()
        await connection.close()
        await relay.stop()


async def test_rows_published_inline_by_many_handlers_at_once_are_all_marked(
    store: Store, wire: Wire
) -> None:
    sagas = [str(uuid.uuid4()) for _ in range(40)]
    written: list[list[OutboxRow]] = []
    for saga in sagas:
        async with store.write() as session:
            written.append(
                await store.finish(session, saga_id=saga, rows=[_row(saga, 1), _row(saga, 2)])
            )

    # as forty handlers do after their commits: publish (and ack once confirmed); the
    # marks are written in the background, in shared transactions
    await asyncio.gather(*(wire.relay.publish(rows) for rows in written))
    await wire.relay.settle()

    assert await store.count_pending_outbox() == 0
    received = [
        (m.correlation_id or "", m.message_id or "") for m in await wire.received(2 * len(sagas))
    ]
    # each saga's two events arrived, in the order they were written
    for saga, rows in zip(sagas, written, strict=True):
        assert [m for s, m in received if s == saga] == [r.event_id for r in rows]


async def test_a_row_whose_mark_failed_is_published_again_by_the_relay(
    store: Store, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    saga = str(uuid.uuid4())
    async with store.write() as session:
        rows = await store.finish(session, saga_id=saga, rows=[_row(saga, 1)])

    async def database_away(*args: object, **kwargs: object) -> None:
        raise ConnectionError("database away")

    with monkeypatch.context() as patched:
        patched.setattr(store, "mark_sent", database_away)
        await wire.relay.publish(rows)  # confirmed: the handler would ack now
        await wire.relay.settle()
    assert [r.event_id for r in await store.pending_outbox()] == [rows[0].event_id]

    assert await wire.relay.flush() == 1  # the relay loop's pass, once the row is old enough
    assert await store.count_pending_outbox() == 0
    # the same event twice: consumers drop the copy by its id
    assert [m.message_id for m in await wire.received(2)] == [rows[0].event_id] * 2


async def test_a_row_waiting_for_its_sent_mark_is_never_published_again_by_the_loop(
    store: Store, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    saga = str(uuid.uuid4())
    async with store.write() as session:
        rows = await store.finish(session, saga_id=saga, rows=[_row(saga, 1)])
    marks_may_go = asyncio.Event()
    mark_sent = store.mark_sent

    async def slow_mark(*args: Any, **kwargs: Any) -> None:
        await marks_may_go.wait()  # a store busy with other writes, under load
        await mark_sent(*args, **kwargs)

    monkeypatch.setattr(store, "mark_sent", slow_mark)
    await wire.relay.publish(rows)  # confirmed: the handler acks; the mark is still to come

    # The loop's pass, however old the row (older_than=None): it waits for its mark only.
    assert await wire.relay.flush() == 0
    marks_may_go.set()
    await wire.relay.settle()
    assert await store.count_pending_outbox() == 0
    assert await wire.relay.flush() == 0

    [received] = await wire.received(1)
    assert received.message_id == rows[0].event_id
    assert await wire.queue.get(fail=False) is None  # one copy on the wire, not two


async def test_a_row_held_by_a_handler_between_commit_and_publish_is_left_alone(
    store: Store, wire: Wire
) -> None:
    saga = str(uuid.uuid4())
    async with store.write() as session:
        [row] = await store.finish(session, saga_id=saga, rows=[_row(saga, 1)])
    wire.relay.hold([row.event_id])  # as the runtime does when the handler writes it
    assert wire.relay.in_hand(row.event_id)

    assert await wire.relay.flush() == 0  # the handler publishes it right after its commit

    wire.relay.release([row.event_id])  # the handler let go of it (its publish failed)
    assert not wire.relay.in_hand(row.event_id)
    assert await wire.relay.flush() == 1
    assert [m.message_id for m in await wire.received(1)] == [row.event_id]


async def test_a_row_whose_publish_failed_is_retried_at_the_next_pass_whatever_its_age(
    store: Store, rabbitmq_url: str
) -> None:
    exchange = f"unbound-{uuid.uuid4().hex[:8]}"
    # As services build theirs: a message the broker returns is an error.
    broker = RabbitBroker(rabbitmq_url, default_channel=Channel(on_return_raises=True))
    relay = OutboxRelay(store, broker, flow_exchange(exchange), participant="test", interval=60)
    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=True
        )
        await broker.start()
        saga = str(uuid.uuid4())
        async with store.write() as session:
            rows = await store.finish(session, saga_id=saga, rows=[_row(saga, 1)])

        published = await relay.publish(rows)  # no queue bound yet: returned, unroutable
        assert published.unpublished == rows
        assert published.refusal is None  # not the broker refusing: nothing is held
        assert not relay.in_hand(rows[0].event_id)
        assert await relay.flush(older_than=timedelta(minutes=1)) == 0  # young: not stale

        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(declared, routing_key="#")
        assert await relay.retry_failed() == 1  # the next pass, however young the row
        message = await queue.get(timeout=5)
        assert message.message_id == rows[0].event_id
        assert await store.count_pending_outbox() == 0
    finally:
        await broker.stop()
        await connection.close()
        await relay.stop()
