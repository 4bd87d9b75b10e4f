"""Logs, traces, metrics and health endpoints of a service."""

from sagakit.observability._health import HttpEndpoint
from sagakit.observability._logging import (
    JsonLineFormatter,
    TextLineFormatter,
    configure_logging,
    saga_log_handler,
)
from sagakit.observability._messaging import MessagingSpanBuilder
from sagakit.observability._setup import (
    flush_tracing,
    observe,
    otlp_protocol,
    setup_tracing,
    tracing_enabled,
)
from sagakit.observability._tracing import SagaTracePropagator, current_trace_id

__all__ = [
    "HttpEndpoint",
    "JsonLineFormatter",
    "MessagingSpanBuilder",
    "SagaTracePropagator",
    "TextLineFormatter",
    "configure_logging",
    "current_trace_id",
    "flush_tracing",
    "observe",
    "otlp_protocol",
    "saga_log_handler",
    "setup_tracing",
    "tracing_enabled",
]
