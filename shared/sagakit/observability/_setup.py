"""Logs, traces, metrics and health of a service; tracing from the ``OTEL_*`` variables.

Tracing is on when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``) and the SDK is not disabled (``OTEL_SDK_DISABLED``); the
protocol is ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``grpc`` or ``http/protobuf``, the OTLP default). Batching follows ``OTEL_BSP_*``.

The aio-pika instrumentation carries the trace across RabbitMQ (it wraps ``Queue.consume``
and ``Exchange.publish``, which FastStream uses): one producer span per publish and one
consumer span per delivery, no more. FastStream's own telemetry middleware is deliberately
not used, as it would add a second span for every message (docs/design.md §5). The
instrumentation still names its attributes after the messaging conventions of 2023
(``messaging.destination`` as ``"exchange,routing key"``, ``messaging.operation: receive``
for a push consumer, ``messaging.temp_destination`` on every publish): sagakit gives it a
span builder that writes the current ones instead (``MessagingSpanBuilder``). Spans carry
``service.name`` and ``service.version`` (the service's distribution), and anything in
``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version

from faststream import FastStream
from faststream.rabbit import RabbitBroker
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from sagakit.observability._health import Check, HttpEndpoint, endpoints_for
from sagakit.observability._logging import (
    Delivery,
    configure_logging,
    unwatch_deliveries,
    watch_deliveries,
)
from sagakit.observability._messaging import instrument_aio_pika
from sagakit.observability._metrics import ServiceKind, service_registry
from sagakit.observability._startup import where_line
from sagakit.observability._tracing import SagaIdGenerator, install_saga_propagator

logger = logging.getLogger("sagakit.observability")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "http/protobuf"

# One tracer provider per process: OpenTelemetry refuses to replace the global one.
_provider: TracerProvider | None = None


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((environ[name].strip() for name in names if environ.get(name, "").strip()), "")


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names an OTLP endpoint and does not disable the SDK."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(_first(environ, ENDPOINT_VARIABLES))


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol the environment asks for; raises ValueError for an unknown one."""
    environ = os.environ if environ is None else environ
    protocol = _first(environ, PROTOCOL_VARIABLES) or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        raise ValueError(f"unsupported OTLP protocol {protocol!r}: use one of {PROTOCOLS}")
    return protocol


def _exporter(protocol: str) -> SpanExporter:
    # Both exporters read endpoint, headers, timeout and compression from OTEL_* themselves.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def service_version(service_name: str) -> str:
    """The version of the distribution that ships ``service_name`` (``<name>-service``),
    else sagakit's."""
    for distribution in (f"{service_name}-service", service_name, "sagakit"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "0.0.0"


def setup_tracing(service_name: str) -> TracerProvider | None:
    """Export spans over OTLP and instrument aio-pika, once per process.

    The exporters read the rest of their configuration (headers, timeout, compression,
    certificates) from the ``OTEL_*`` variables themselves.

    Args:
        service_name: The ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise.

    Returns:
        The tracer provider, or None when tracing is off.
    """
    global _provider
    environ = os.environ
    if _provider is not None:
        return _provider
    if not tracing_enabled(environ):
        return None
    protocol = otlp_protocol(environ)
    name = environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: service_version(name)})
    provider = TracerProvider(resource=resource, id_generator=SagaIdGenerator())
    provider.add_span_processor(BatchSpanProcessor(_exporter(protocol)))
    trace.set_tracer_provider(provider)
    install_saga_propagator()
    instrument_aio_pika(provider)
    _provider = provider
    logger.info("tracing to %s over %s as %s", _first(environ, ENDPOINT_VARIABLES), protocol, name)
    return provider


def flush_tracing(*, timeout_seconds: float = 5.0) -> bool:
    """Export every finished span now; True when nothing was left behind (or tracing is off).

    The provider itself is shut down when the process exits, so that a service started
    again in the same process (tests) still traces.
    """
    if _provider is None:
        return True
    return _provider.force_flush(timeout_millis=int(timeout_seconds * 1000))


def observe(
    app: FastStream,
    *,
    service: str,
    broker: RabbitBroker,
    checks: Mapping[str, Check],
    queues: Mapping[str, tuple[str, str]],
    log_format: str,
    log_level: str,
    metrics_port: int | None,
    health_port: int | None,
    configure_logs: bool = True,
    metrics: ServiceKind = "participant",
    broker_metrics: bool = False,
) -> tuple[HttpEndpoint, ...]:
    """Give ``app`` logs, traces, metrics and health; call before registering other hooks.

    When the app starts: logging is configured, tracing set up from ``OTEL_*``, the health
    and metrics endpoints listen (so ``/livez`` answers while the rest starts), and log
    lines learn which delivery the broker is handling. When it has shut down: the endpoints
    close and finished spans are flushed.

    Args:
        app: The FastStream app of the service.
        service: The service's name, for logs and traces.
        broker: The app's broker.
        checks: Named readiness checks for ``/readyz``.
        queues: Queue name to (event type, step) of each subscriber, for log lines.
        log_format: ``text`` or ``json``.
        log_level: The root level, e.g. ``INFO``.
        metrics_port: Where ``/metrics`` listens, or None for no endpoint.
        health_port: Where ``/livez`` and ``/readyz`` listen, or None for no endpoint.
        configure_logs: Set up the root logger (off when the caller manages logging).
        metrics: Which series ``/metrics`` serves: a participant's or the tracker's (each
            with the store's and the process'), from a registry of the service's own.
        broker_metrics: Add FastStream's Prometheus middleware (``faststream_*`` series:
            messages received and published, sizes, processing times, by queue) to that
            registry.

    Returns:
        The HTTP endpoints that will listen (their ``port`` is real once started).
    """
    registry = service_registry(metrics)
    if broker_metrics:
        broker.add_middleware(RabbitPrometheusMiddleware(registry=registry, app_name=service))
    endpoints = tuple(
        endpoints_for(
            health_port=health_port, metrics_port=metrics_port, checks=checks, registry=registry
        )
    )
    watching: list[Callable[[], Delivery | None]] = []

    @app.on_startup
    async def start_observing() -> None:
        if configure_logs:
            configure_logging(service=service, log_format=log_format, level=log_level)
        where = where_line(service)
        if where is not None:
            logger.info("%s", where)
        setup_tracing(service)
        watching.append(watch_deliveries(broker.context, queues))
        for endpoint in endpoints:
            await endpoint.start()

    @app.after_shutdown
    async def stop_observing() -> None:
        for endpoint in endpoints:
            await endpoint.stop()
        while watching:
            unwatch_deliveries(watching.pop())
        if not flush_tracing():
            logger.warning("some spans could not be exported before shutdown")

    return endpoints
