"""Several broker addresses on the real broker: the first that answers is used, and a lost
connection moves to the next.

Two TCP proxies in front of the one test broker stand for two nodes of a cluster: closing
one is a node going away (its connections reset, its port refuses). The 3-node cluster
itself, with quorum queues and the order system, is tests/e2e/test_broker_failover.py.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
import pytest_asyncio
from faststream.rabbit import RabbitQueue
from sagakit import BrokerUnavailable
from sagakit.broker import FailoverConnection, rabbit_broker
from sagakit.client import connect
from sagakit_lab import TcpProxy

pytestmark = pytest.mark.integration


def _refusing_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _at(url: str, *addresses: str) -> str:
    """``url`` in the comma form, its host replaced by ``addresses``."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials}@{','.join(addresses)}").geturl()


@pytest_asyncio.fixture
async def two_nodes(rabbitmq_url: str) -> AsyncIterator[tuple[TcpProxy, TcpProxy]]:
    broker = urlsplit(rabbitmq_url)
    first = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    second = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_the_first_node_that_answers_is_used(rabbitmq_url: str) -> None:
    real = urlsplit(rabbitmq_url).netloc.rpartition("@")[2]
    dead = f"127.0.0.1:{_refusing_port()}"
    connection = await connect(_at(rabbitmq_url, dead, real), connect_timeout=5)
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.url.port == urlsplit(rabbitmq_url).port
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()
    plain = await connect(_at(rabbitmq_url, dead, real), connect_timeout=5, robust=False)
    await plain.close()


@pytest.mark.parametrize("robust", [True, False], ids=["robust", "plain"])
async def test_no_node_answering_names_every_node(rabbitmq_url: str, robust: bool) -> None:
    dead = [f"127.0.0.1:{_refusing_port()}" for _ in range(2)]
    url = _at(rabbitmq_url, *dead).replace("guest:guest", "guest:s3cret")
    attempt = (
        connect(url, connect_timeout=2) if robust else connect(url, connect_timeout=2, robust=False)
    )
    with pytest.raises(BrokerUnavailable) as raised:
        await attempt
    message = str(raised.value)
    assert all(address in message for address in dead), message
    assert "s3cret" not in message


async def test_a_consumer_moves_to_the_next_node_when_its_node_goes_away(
    rabbitmq_url: str, two_nodes: tuple[TcpProxy, TcpProxy]
) -> None:
    first, second = two_nodes
    queue_name = f"failover-{uuid.uuid4().hex[:8]}"
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            await received.put(message.body)

    consumer = await connect(_at(rabbitmq_url, first.address, second.address), connect_timeout=5)
    publisher = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await consumer.channel()
        # Not auto-deleted: its consumer goes away with the node, the queue must stay.
        queue = await channel.declare_queue(queue_name)
        await queue.consume(on_message)
        out = await publisher.channel()
        await out.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue_name)
        assert await asyncio.wait_for(received.get(), 10) == b"before"
        assert (first.connections, second.connections) == (1, 0)

        await first.close()  # the node is gone: its connection reset, its port refusing

        # Published while the consumer reconnects: the queue keeps it for the consumer.
        await out.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue_name)
        # "before" may come again: its ack may have gone down with the connection.
        while (body := await asyncio.wait_for(received.get(), 30)) != b"after":
            assert body == b"before"
        assert isinstance(consumer, FailoverConnection)
        assert consumer.current_host.port == second.port
        assert second.connections == 1
    finally:
        await consumer.close()
        cleanup = await publisher.channel()
        await cleanup.queue_delete(queue_name)
        await publisher.close()


async def test_a_faststream_broker_starts_on_the_node_that_answers(rabbitmq_url: str) -> None:
    real = urlsplit(rabbitmq_url).netloc.rpartition("@")[2]
    broker = rabbit_broker(_at(rabbitmq_url, f"127.0.0.1:{_refusing_port()}", real))
    queue = RabbitQueue(f"failover-fs-{uuid.uuid4().hex[:8]}", auto_delete=True)
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @broker.subscriber(queue)
    async def handle(body: str) -> None:
        if not got.done():
            got.set_result(body)

    async with broker:
        await broker.start()
        await broker.publish("hello", queue=queue)
        assert await asyncio.wait_for(got, 10) == "hello"
