"""What the current messaging conventions cost per span: the aio-pika instrumentation's own
span builder against sagakit's ``MessagingSpanBuilder``, producer and consumer spans.

    uv run python bench/span_builder_bench.py            # 20000 spans each, 5 alternating runs

Both build and end real SDK spans (a tracer provider with a span processor that drops
them), so the figure is the builder's and the SDK's work per span, not the export's.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from types import SimpleNamespace
from typing import Any

from opentelemetry.instrumentation.aio_pika.span_builder import SpanBuilder
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.semconv.trace import MessagingOperationValues
from sagakit.observability import MessagingSpanBuilder
from yarl import URL


class _Drop(SpanProcessor):
    pass


def _fixtures() -> tuple[Any, Any, Any]:
    connection = SimpleNamespace(url=URL("amqp://guest:guest@127.0.0.1:5672/"))
    channel = SimpleNamespace(_connection=connection)
    properties = SimpleNamespace(message_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
    outgoing = SimpleNamespace(properties=properties, body=b"x" * 900)
    incoming = SimpleNamespace(
        properties=properties,
        body=b"x" * 900,
        routing_key="order.created",
        delivery_tag=42,
        exchange="orders",
    )
    return channel, outgoing, incoming


def run(builder_class: type[Any], spans: int, tracer: Any) -> float:
    channel, outgoing, incoming = _fixtures()
    began = time.perf_counter()
    for n in range(spans):
        builder = builder_class(tracer)
        if n % 2:
            builder.set_as_producer()
            builder.set_destination("orders,order.created")
            builder.set_channel(channel)
            builder.set_message(outgoing)
        else:
            builder.set_as_consumer()
            builder.set_operation(MessagingOperationValues.RECEIVE)
            builder.set_destination(incoming.exchange)
            builder.set_channel(channel)
            builder.set_message(incoming)
        builder.build().end()
    return (time.perf_counter() - began) / spans * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(_Drop())
    tracer = provider.get_tracer("bench")
    figures: dict[str, list[float]] = {"instrumentation": [], "sagakit": []}
    for _ in range(args.runs):
        figures["instrumentation"].append(run(SpanBuilder, args.spans, tracer))
        figures["sagakit"].append(run(MessagingSpanBuilder, args.spans, tracer))
    for name, values in figures.items():
        print(
            f"{name:16} median {statistics.median(values):6.2f} µs/span "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
