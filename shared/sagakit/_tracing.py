"""OpenTelemetry glue: a span per step or compensation, and trace context through the outbox."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from ._context import SagaContext

_tracer = trace.get_tracer("sagakit")


@contextlib.contextmanager
def step_span(
    name: str, *, saga: SagaContext, step: str, participant: str, parent: Mapping[str, str]
) -> Iterator[Span]:
    """A span for one step, compensation or reaction, child of the incoming message's trace.

    Attributes carry saga identity only, never payload fields (no personal data).
    """
    # With the aio-pika instrumentation the consumer span is current and becomes the parent;
    # without it, the trace continues straight from the message headers.
    parent_context = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent_context = propagate.extract({k: v for k, v in parent.items() if isinstance(v, str)})
    with _tracer.start_as_current_span(
        name,
        context=parent_context,
        kind=SpanKind.INTERNAL,
        attributes={
            "saga.id": str(saga.saga_id),
            "saga.type": saga.saga_type,
            "saga.step": step,
            "saga.participant": participant,
        },
    ) as span:
        yield span


def current_trace_headers() -> dict[str, str]:
    """The W3C trace headers of the current span, to be stored with an outbox row."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued_trace(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace stored in ``headers`` current, so a late publish continues it."""
    token = otel_context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        otel_context.detach(token)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a recorded trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
