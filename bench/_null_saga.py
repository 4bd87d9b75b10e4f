"""The null saga: the order saga's broker work with handlers that do nothing.

Same topology as the services (a durable topic exchange ``orders``, one durable quorum queue
per hop with the same arguments), same messages per fulfilled saga (the start event plus
one per hop: five persistent messages), and the same discipline per hop: consume with
manual acks, publish the next message persistently with a publisher confirm, and ack only
after the confirm. What is missing is everything sagakit and the services do besides.

Run one hop as a process: ``python bench/_null_saga.py AMQP_URL HOP [--prefetch N]``.

``--faststream`` runs the hop as a FastStream app instead (a subscriber with manual acks
that publishes through ``RabbitBroker.publish``, its per-message log lines at DEBUG as the
services' are): the ceiling of any participant that is a FastStream app.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from faststream import AckPolicy, BaseMiddleware, FastStream
from faststream.message import StreamMessage
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)

EXCHANGE = "orders"
# The routing key each hop consumes, then the one the last hop publishes (terminal).
ROUTING_KEYS = ("order.created", "null.hop1.done", "null.hop2.done", "null.hop3.done")
TERMINAL = "order.fulfilled"
HOPS = len(ROUTING_KEYS)
# As the services' work queues (sagakit.broker._topology.DELIVERY_LIMIT).
DELIVERY_LIMIT = 20


def queue_name(hop: int) -> str:
    """The quorum queue hop ``hop`` (1-based) consumes from."""
    return f"null{hop}.{ROUTING_KEYS[hop - 1]}"


def next_routing_key(hop: int) -> str:
    """What hop ``hop`` publishes after consuming."""
    return ROUTING_KEYS[hop] if hop < HOPS else TERMINAL


def _queue_arguments(hop: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": f"null{hop}.dlx",
    }


async def declare(channel: AbstractChannel) -> AbstractExchange:
    """Declare the exchange and every hop's queue, bound by its routing key."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    for hop in range(1, HOPS + 1):
        queue = await channel.declare_queue(
            queue_name(hop), durable=True, arguments=_queue_arguments(hop)
        )
        await queue.bind(exchange, routing_key=ROUTING_KEYS[hop - 1])
    return exchange


async def serve(url: str, hop: int, *, prefetch: int) -> None:
    """Forward every message of hop ``hop`` until SIGTERM."""
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=prefetch)
    exchange = await declare(channel)
    queue = await channel.declare_queue(
        queue_name(hop), durable=True, arguments=_queue_arguments(hop)
    )
    routing_key = next_routing_key(hop)

    async def forward(message: AbstractIncomingMessage) -> None:
        await exchange.publish(
            aio_pika.Message(
                message.body,
                headers=dict(message.headers),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                content_type=message.content_type,
                type=routing_key,
            ),
            routing_key=routing_key,
            mandatory=True,
        )
        await message.ack()

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    tag = await queue.consume(forward)
    await stopped.wait()
    with contextlib.suppress(Exception):
        await queue.cancel(tag)
    await connection.close()


async def serve_faststream(url: str, hop: int, *, prefetch: int) -> None:
    """As ``serve``, on FastStream: what FastStream itself costs per message."""
    # The delivery reaches the handler as sagakit's does: through a context variable set by
    # a middleware (a RabbitMessage parameter would be resolved on a worker thread).
    delivery: ContextVar[StreamMessage[Any]] = ContextVar("delivery")

    class KeepDelivery(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            token = delivery.set(msg)
            try:
                return await call_next(msg)
            finally:
                delivery.reset(token)

    broker = RabbitBroker(
        url,
        default_channel=Channel(prefetch_count=prefetch, on_return_raises=True),
        middlewares=[KeepDelivery],
        log_level=logging.DEBUG,
    )
    exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(
        queue_name(hop),
        durable=True,
        queue_type=QueueType.QUORUM,
        routing_key=ROUTING_KEYS[hop - 1],
        arguments={
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": f"null{hop}.dlx",
        },
    )
    routing_key = next_routing_key(hop)

    @broker.subscriber(queue, exchange, ack_policy=AckPolicy.MANUAL, no_reply=True)
    async def forward(body: dict[str, Any]) -> None:
        message = delivery.get()
        await broker.publish(
            message.body,
            exchange=exchange,
            routing_key=routing_key,
            headers=dict(message.headers),
            persist=True,
            mandatory=True,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            message_type=routing_key,
        )
        await message.ack()

    await FastStream(broker).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("hop", type=int, choices=range(1, HOPS + 1))
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--faststream", action="store_true", help="run the hop on FastStream")
    args = parser.parse_args()
    run = serve_faststream if args.faststream else serve
    # The event loop the services get from `faststream run` (uvloop, installed with
    # sagakit): the ceiling runs on the same loop as what it is compared with.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(args.url, args.hop, prefetch=args.prefetch))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
