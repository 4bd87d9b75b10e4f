"""When tracing is on, over which protocol, and which trace an untraced message joins."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sagakit.observability import SagaTracePropagator, otlp_protocol, tracing_enabled
from sagakit.observability._tracing import record_outcome, record_step_failure, saga_trace_context

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint(environ: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(environ) is enabled


def test_the_protocol_comes_from_the_environment() -> None:
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    assert (
        otlp_protocol(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            }
        )
        == "http/protobuf"
    )
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), SagaTracePropagator()])


def test_an_untraced_message_joins_the_trace_named_after_its_saga() -> None:
    saga_id = uuid.uuid4()
    first = trace.get_current_span(PROPAGATOR.extract({"x-saga-id": str(saga_id)}))
    second = trace.get_current_span(PROPAGATOR.extract({"x-saga-id": str(saga_id)}))
    context = first.get_span_context()
    assert context.is_valid
    assert context.is_remote
    assert format(context.trace_id, "032x") == saga_id.hex
    assert context.trace_flags.sampled
    assert second.get_span_context() == context == saga_trace_context(saga_id)


def test_a_senders_trace_wins_over_the_sagas() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    carrier = {
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "x-saga-id": str(uuid.uuid4()),
    }
    context = trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()
    assert format(context.trace_id, "032x") == trace_id


@pytest.mark.parametrize("carrier", [{}, {"x-saga-id": "not a uuid"}])
def test_no_saga_id_no_trace(carrier: dict[str, str]) -> None:
    assert not trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context().is_valid


def test_a_business_failure_is_not_an_error_span_but_a_parked_message_is() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as business:
        record_step_failure("card_declined")
        record_outcome(business, "failed")
    with tracer.start_as_current_span("step") as technical:
        record_step_failure("retries_exhausted")
    with tracer.start_as_current_span("compensation") as parked:
        record_outcome(parked, "parked")

    assert business.status.status_code is StatusCode.UNSET  # type: ignore[attr-defined]
    assert business.attributes["saga.failure.reason"] == "card_declined"  # type: ignore[attr-defined]
    assert [e.name for e in business.events] == ["saga.step_failed"]  # type: ignore[attr-defined]
    assert technical.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
    assert parked.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
    assert parked.attributes["saga.outcome"] == "parked"  # type: ignore[attr-defined]
