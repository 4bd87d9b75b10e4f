"""OpenTelemetry glue: a span per step or compensation, and trace context through the outbox."""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from sagakit._context import SagaContext
from sagakit._envelope import SAGA_ID_HEADER

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


# Outcomes that need a person: the span is marked as an error. A business failure is not
# one: it is an outcome the flow expects, and the saga's own compensation answers it.
ERROR_OUTCOMES = frozenset({"parked"})
# Failure reasons that are technical, not business rules: the step failed for our sake.
TECHNICAL_FAILURES = frozenset({"retries_exhausted"})


def record_outcome(span: Span, outcome: str) -> None:
    """Put ``saga.outcome`` on a step span; a parked message makes it an error span."""
    span.set_attribute("saga.outcome", outcome)
    if outcome in ERROR_OUTCOMES:
        span.set_status(Status(StatusCode.ERROR, f"saga.outcome={outcome}"))


def record_step_failure(reason: str) -> None:
    """Note on the current span why the step failed (a reason code, never payload data).

    A business failure leaves the span's status unset, since compensating is the flow
    working as designed; a technical one (retries exhausted) marks it as an error.
    """
    span = trace.get_current_span()
    span.set_attribute("saga.failure.reason", reason)
    span.add_event("saga.step_failed", {"saga.failure.reason": reason})
    if reason in TECHNICAL_FAILURES:
        span.set_status(Status(StatusCode.ERROR, f"step failed: {reason}"))


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


def saga_trace_context(saga_id: uuid.UUID) -> SpanContext:
    """The trace a saga runs in when whoever started it did not trace: its id, as a trace id.

    Every consumer of an untraced start event (the first step, the tracker, any observer)
    then joins the same trace, named after the saga, under one shared (never exported)
    parent span; and that trace is found in Jaeger by the saga id without its dashes.
    """
    span_id = saga_id.int & 0xFFFF_FFFF_FFFF_FFFF or 1
    return SpanContext(
        trace_id=saga_id.int,
        span_id=span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


class SagaTracePropagator(TextMapPropagator):
    """Extracts ``saga_trace_context`` from ``x-saga-id`` when a message carries no trace.

    It runs after the configured propagators (W3C ``traceparent`` by default), so a trace the
    sender started always wins; it injects nothing of its own.
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if trace.get_current_span(context).get_span_context().is_valid:
            return context if context is not None else Context()
        values = getter.get(carrier, SAGA_ID_HEADER) or []
        try:
            saga_id = uuid.UUID(str(values[0])) if values else None
        except ValueError:
            saga_id = None
        if saga_id is None or saga_id.int == 0:
            return context if context is not None else Context()
        return trace.set_span_in_context(NonRecordingSpan(saga_trace_context(saga_id)), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {SAGA_ID_HEADER}


class TextHeadersOnly(TextMapPropagator):
    """Extracts with ``inner`` from the string values of a mapping carrier only.

    AMQP headers may hold any type, and the W3C propagators raise on anything but a string:
    inside the aio-pika instrumentation that kills the delivery before sagakit sees it, and
    the message stays unacknowledged, holding a prefetch slot, however valid its body.
    """

    def __init__(self, inner: TextMapPropagator) -> None:
        self.inner = inner

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if isinstance(carrier, Mapping):
            text = {k: v for k, v in carrier.items() if isinstance(v, str)}
            return self.inner.extract(text, context)
        return self.inner.extract(carrier, context, getter=getter)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        self.inner.inject(carrier, context, setter=setter)

    @property
    def fields(self) -> set[str]:
        return self.inner.fields


def install_saga_propagator() -> None:
    """Add ``SagaTracePropagator`` after the process' propagators (``OTEL_PROPAGATORS``)."""
    current = propagate.get_global_textmap()
    if SAGA_ID_HEADER in current.fields:
        return
    composite = CompositePropagator([current, SagaTracePropagator()])
    propagate.set_global_textmap(TextHeadersOnly(composite))


# The trace id the next root span gets (the saga's id), set only around ``saga_root_span``.
_next_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sagakit_next_trace_id", default=None
)


class SagaIdGenerator(RandomIdGenerator):
    """Random ids, except that the root span of a saga's start takes the saga id as trace id.

    So a saga's trace is found by its id (without dashes) whether or not the one who started
    it traced: a traced start gets a real, exported root span with that id; an untraced one
    gets the same trace id from ``SagaTracePropagator`` at every consumer.
    """

    def generate_trace_id(self) -> int:
        wanted = _next_trace_id.get()
        return wanted if wanted else super().generate_trace_id()


@contextlib.contextmanager
def saga_root_span(saga: SagaContext) -> Iterator[None]:
    """The root span of a saga's start, when the caller is not in a trace already.

    Its trace id is the saga id when the tracer provider uses ``SagaIdGenerator`` (sagakit's
    own, ``setup_tracing``); the publish span of the start event is its child.
    """
    if trace.get_current_span().get_span_context().is_valid:
        yield  # the caller's trace goes on: the saga is part of it
        return
    token = _next_trace_id.set(saga.saga_id.int or None)
    try:
        span = _tracer.start_span(
            f"saga start {saga.saga_type}",
            kind=SpanKind.PRODUCER,
            attributes={"saga.id": str(saga.saga_id), "saga.type": saga.saga_type},
        )
    finally:
        _next_trace_id.reset(token)
    with trace.use_span(span, end_on_exit=True):
        yield
