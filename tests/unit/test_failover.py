"""What sagakit.broker._failover relies on in FastStream and aio-pika, checked without a broker.

FastStream's RabbitBroker takes one URL and has no connection factory; sagakit puts a
``connection_class`` into the keyword arguments it hands to ``aio_pika.connect_robust``.
If a new FastStream stops passing them, or aio-pika stops taking ``connection_class`` or
stops calling ``close_callbacks`` with the error, these tests fail before failover does.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aio_pika
import faststream.rabbit.broker.broker as faststream_broker
import pytest
from sagakit.broker import BrokerHost, FailoverConnection, rabbit_broker
from yarl import URL

NODES = "amqp://user:pw@node1:5672,node2:5673,node3/vh"


class _Connected(Exception):
    """Raised by the stand-in for connect_robust once it has seen its arguments."""


async def test_faststream_connects_through_the_connection_class_we_give_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def connect_robust(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Connected

    monkeypatch.setattr(faststream_broker, "connect_robust", connect_robust)
    broker = rabbit_broker(NODES)
    with pytest.raises(_Connected):
        await broker.connect()
    assert URL(seen["url"]).host == "node1"
    connection = seen["connection_class"](URL(seen["url"]), fail_fast=True)
    assert isinstance(connection, FailoverConnection)
    assert connection.hosts == (
        BrokerHost("node1", 5672),
        BrokerHost("node2", 5673),
        BrokerHost("node3", None),
    )


def test_aio_pika_takes_a_connection_class() -> None:
    assert "connection_class" in inspect.signature(aio_pika.connect_robust).parameters


def _three_nodes(interval: float) -> FailoverConnection:
    return FailoverConnection(
        URL(f"amqp://user:pw@node1:5672/vh?reconnect_interval={interval}"),
        hosts=[BrokerHost("node1", 5672), BrokerHost("node2", 5673), BrokerHost("node3", None)],
    )


async def _lose(connection: FailoverConnection, exc: BaseException | None = None) -> None:
    # What aio-pika calls when an attempt fails or an open connection is lost.
    await connection.close_callbacks(exc or ConnectionError("gone"))


async def test_each_loss_moves_the_connection_to_the_next_node_then_round_again() -> None:
    connection = _three_nodes(7)
    try:
        seen = []
        for _ in range(4):
            await _lose(connection)
            seen.append((connection.url.host, connection.url.explicit_port))
            seen.append(connection.reconnect_interval)
        assert seen == [
            ("node2", 5673),
            0,  # not tried since the last connection that lasted: at once
            ("node3", None),
            0,
            ("node1", 5672),
            7,  # a whole round failed: the configured pause
            ("node2", 5673),
            7,
        ]
        failure = ConnectionError("restore failed")
        await _lose(connection, failure)
        await _lose(connection, failure)  # the same failure, reported twice: one miss
        assert connection.url.host == "node3"
        assert connection.url.user == "user"
        assert connection.url.path == "/vh"

        await connection.reconnect_callbacks()  # what aio-pika calls after reconnecting
        assert connection.reconnect_interval == 0  # a loss is heeded at once
        await _lose(connection)  # lost at once: a node that drops fresh connections
        assert connection.reconnect_interval == 7  # is paced, not hammered
    finally:
        await connection.close()


async def test_a_connection_that_lasted_starts_a_new_round() -> None:
    connection = _three_nodes(0.05)
    try:
        for _ in range(3):
            await _lose(connection)
        assert connection.reconnect_interval == 0.05
        await connection.reconnect_callbacks()
        await asyncio.sleep(0.1)
        await _lose(connection)
        assert connection.reconnect_interval == 0  # the other nodes, at once
    finally:
        await connection.close()


async def test_a_renewal_returns_to_the_same_node_at_once() -> None:
    connection = _three_nodes(7)
    try:
        await connection.reconnect_callbacks()
        connection._renewing = True  # what renew() sets before it drops the connection
        await _lose(connection, None)  # the close may report no error at all
        assert (connection.url.host, connection.reconnect_interval) == ("node1", 0)
        await _lose(connection)  # the next loss is a loss again
        assert connection.url.host == "node2"
    finally:
        await connection.close()


async def test_fail_fast_is_kept_for_the_first_round_only() -> None:
    connection = FailoverConnection(URL("amqp://node1/?fail_fast=1"), hosts=())
    try:
        # aio-pika's own fail-fast would end its reconnect loop at the first refusal.
        assert connection.fail_fast is False
        assert connection.hosts == (BrokerHost("node1", None),)
    finally:
        await connection.close()
