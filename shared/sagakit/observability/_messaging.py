"""The aio-pika instrumentation's spans, with the current messaging semantic conventions.

``opentelemetry-instrumentation-aio-pika`` builds every span through its ``SpanBuilder``,
which still writes the conventions of 2023. ``MessagingSpanBuilder`` takes its place (the
instrumentation looks the class up in its decorator modules at each message) and writes:

- ``messaging.system`` ``rabbitmq``; ``messaging.operation.type`` ``send`` for a publish and
  ``process`` for a push consumer's delivery (the span covers the handling);
  ``messaging.operation.name`` ``publish`` / ``deliver`` (AMQP's ``basic.publish`` and
  ``basic.deliver``);
- ``messaging.destination.name``: the exchange (RabbitMQ's destination), and
  ``messaging.rabbitmq.destination.routing_key``: the event type;
- ``messaging.destination.subscription.name``: the queue a consumer reads;
- ``messaging.message.id`` (the event id), ``messaging.message.conversation_id`` (the
  correlation id, the saga id), ``messaging.message.body.size``,
  ``messaging.rabbitmq.message.delivery_tag``; ``server.address`` and ``server.port``;
- span names ``publish orders`` and ``process orders`` (operation, then destination).

Still one producer span per publish and one consumer span per delivery.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.aio_pika import (
    AioPikaInstrumentor,
    callback_decorator,
    publish_decorator,
)
from opentelemetry.instrumentation.aio_pika.span_builder import SpanBuilder
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, TracerProvider

SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
SUBSCRIPTION = "messaging.destination.subscription.name"
ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
DELIVERY_TAG = "messaging.rabbitmq.message.delivery_tag"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BODY_SIZE = "messaging.message.body.size"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"


class MessagingSpanBuilder(SpanBuilder):
    """``SpanBuilder`` of the aio-pika instrumentation, writing the current conventions."""

    def __init__(self, tracer: Any) -> None:
        super().__init__(tracer)
        self._attributes: dict[str, str | int] = {SYSTEM: "rabbitmq"}  # type: ignore[assignment]

    def set_destination(self, destination: str) -> None:
        # A publish names "exchange,routing key"; a delivery its exchange (or routing key).
        exchange, comma, routing_key = destination.partition(",")
        self._destination = exchange
        self._attributes[DESTINATION] = exchange
        if comma and routing_key:
            self._attributes[ROUTING_KEY] = routing_key

    def set_channel(self, channel: Any) -> None:
        connection = getattr(channel, "_connection", None) or channel.connection
        url = getattr(getattr(connection, "connection", None), "url", None) or connection.url
        self._attributes[SERVER_ADDRESS] = url.host
        self._attributes[SERVER_PORT] = url.port or 5672

    def set_message(self, message: Any) -> None:
        properties = message.properties
        if properties.message_id:
            self._attributes[MESSAGE_ID] = properties.message_id
        if properties.correlation_id:
            self._attributes[CONVERSATION_ID] = properties.correlation_id
        self._attributes[BODY_SIZE] = len(message.body)
        routing_key = getattr(message, "routing_key", None)
        if routing_key:
            self._attributes[ROUTING_KEY] = routing_key
        delivery_tag = getattr(message, "delivery_tag", None)
        if delivery_tag is not None:
            self._attributes[DELIVERY_TAG] = delivery_tag

    def build(self) -> Span | None:
        if not is_instrumentation_enabled():
            return None
        consumer = self._kind == SpanKind.CONSUMER
        self._attributes[OPERATION_TYPE] = "process" if consumer else "send"
        self._attributes[OPERATION_NAME] = "deliver" if consumer else "publish"
        name = f"{'process' if consumer else 'publish'} {self._destination or '(default)'}"
        span: Span = self._tracer.start_span(name, kind=self._kind, attributes=self._attributes)
        return span


def _consumer_span(self: Any, message: Any) -> Span | None:
    # The queue is known to the decorator only: it names the subscription.
    builder = MessagingSpanBuilder(self._tracer)
    builder._kind = SpanKind.CONSUMER
    builder.set_destination(message.exchange or message.routing_key)
    builder.set_channel(self._queue.channel)
    builder.set_message(message)
    builder._attributes[SUBSCRIPTION] = self._queue.name
    return builder.build()


def instrument_aio_pika(provider: TracerProvider) -> None:
    """Instrument aio-pika (once) with spans that follow the current conventions."""
    setattr(publish_decorator, "SpanBuilder", MessagingSpanBuilder)  # noqa: B010
    setattr(callback_decorator.CallbackDecorator, "_get_span", _consumer_span)  # noqa: B010
    instrumentor = AioPikaInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
