"""One trace per saga, across the four services as processes, exported over real OTLP.

The test runs an OTLP/HTTP receiver of its own: the services export to it exactly as they
would to Jaeger's port 4318, and the test decodes what arrives
(``ExportTraceServiceRequest``) to check the shape of each saga's trace. A second test reads
every exported span and every line the services logged, and looks for the order's personal
data in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from order_contracts import ORDER_SAGA, Customer, OrderCreated, ShippingAddress
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope
from sagakit.client import EventWatch, SagaClient
from sagakit.testing import QueueProbe, ServiceProcesses
from sagakit.tracker import TRACKER_QUEUE

from tests.conftest import fresh_broker_url

from .conftest import PARTICIPANTS, service_processes, sqlite_databases

pytestmark = pytest.mark.e2e

FORWARD = ("reserve_stock", "charge_payment", "ship_order", "confirm_order")
CONSUMER = Span.SpanKind.SPAN_KIND_CONSUMER
PRODUCER = Span.SpanKind.SPAN_KIND_PRODUCER


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the receiver decoded it."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    status: int
    status_message: str
    start: int

    def text(self) -> str:
        """Everything the span says, as one string (for the personal-data search)."""
        return json.dumps(
            [self.name, self.attributes, self.events, self.status_message], default=str
        )


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1, like a collector's port 4318."""

    spans: list[ExportedSpan] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.accept(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def accept(self, request: ExportTraceServiceRequest) -> None:
        decoded: list[ExportedSpan] = []
        resources: list[dict[str, Any]] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            resources.append(resource)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded.append(
                        ExportedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            service=service,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            events=tuple(
                                (e.name, {a.key: _value(a.value) for a in e.attributes})
                                for e in span.events
                            ),
                            status=span.status.code,
                            status_message=span.status.message,
                            start=span.start_time_unix_nano,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(decoded)
            self.resources.extend(resources)

    def snapshot(self) -> list[ExportedSpan]:
        with self._lock:
            return list(self.spans)


@dataclass
class TracedSystem:
    procs: ServiceProcesses
    client: SagaClient
    watch: EventWatch
    receiver: OtlpReceiver
    log_dir: Path
    tracker_db: str
    tracker: subprocess.Popen[bytes]

    @property
    def log_files(self) -> list[Path]:
        return [self.procs.log_path(name) for name in PARTICIPANTS] + [self.log_dir / "tracker.log"]

    async def run(self, order: OrderCreated, *, timeout: float = 30.0) -> list[Envelope[Any]]:
        started = await self.client.start(order)
        return await self.watch.wait_for_end(started.context.saga_id, timeout=timeout)

    async def spans_until(
        self,
        saga_id: uuid.UUID,
        done: Callable[[list[ExportedSpan]], bool],
        *,
        timeout: float = 20.0,
    ) -> list[ExportedSpan]:
        """Every exported span of the saga's trace(s), once ``done`` holds for them."""
        give_up_at = time.monotonic() + timeout
        while True:
            spans = spans_of(self.receiver.snapshot(), saga_id)
            if done(spans) or time.monotonic() > give_up_at:
                return spans
            await asyncio.sleep(0.2)


def spans_of(spans: list[ExportedSpan], saga_id: uuid.UUID) -> list[ExportedSpan]:
    """The spans of every trace that has a span naming the saga (by saga.id or AMQP)."""
    wanted = str(saga_id)
    traces = {
        s.trace_id
        for s in spans
        if wanted
        in (s.attributes.get("saga.id"), s.attributes.get("messaging.message.conversation_id"))
    }
    return [s for s in spans if s.trace_id in traces]


def _has_spans(spans: list[ExportedSpan], *, handler: str) -> bool:
    return bool(saga_spans(spans, handler))


def saga_spans(spans: list[ExportedSpan], handler: str) -> dict[str, ExportedSpan]:
    """sagakit's spans of one handler kind (step, compensation, reaction), by step name."""
    found: dict[str, ExportedSpan] = {}
    for span in spans:
        if span.attributes.get("saga.handler") == handler:
            assert span.attributes["saga.step"] not in found, f"two {handler} spans: {span}"
            found[str(span.attributes["saga.step"])] = span
    return found


def ancestry(span: ExportedSpan, by_id: dict[str, ExportedSpan]) -> list[ExportedSpan]:
    """The span's parents, nearest first, as far as they were exported."""
    chain: list[ExportedSpan] = []
    current = span
    while current.parent_id and current.parent_id in by_id:
        current = by_id[current.parent_id]
        chain.append(current)
    return chain


def assert_caused_by(later: ExportedSpan, earlier: ExportedSpan, spans: list[ExportedSpan]) -> None:
    """``earlier`` is an ancestor of ``later``, through a publish and a consume span."""
    by_id = {s.span_id: s for s in spans}
    parents = ancestry(later, by_id)
    ids = [p.span_id for p in parents]
    assert earlier.span_id in ids, (
        f"{earlier.name} ({earlier.service}) is not an ancestor of {later.name} "
        f"({later.service}); parents: {[(p.name, p.service) for p in parents]}"
    )
    between = parents[: ids.index(earlier.span_id)]
    kinds = [(p.kind, p.service) for p in between]
    assert (CONSUMER, later.service) in kinds, kinds
    assert (PRODUCER, earlier.service) in kinds, kinds


def private_order(token: str) -> OrderCreated:
    """A fulfilable order whose personal data is unique enough to search for."""
    marker = uuid.uuid4().hex[:8]
    base = sample_order(Scenario.FULFILLED)
    return base.model_copy(
        update={
            "customer": Customer(id="cust-7", email=f"pii.{marker}@example.org"),
            "payment_method": token,
            "shipping_address": ShippingAddress(
                name=f"Grace {marker}",
                line1=f"{marker} Hopper Lane",
                city="Dublin",
                postal_code=f"D{marker[:6]}",
                country="IE",
            ),
        }
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


PRIVATE_TOKEN = f"tok_private_{uuid.uuid4().hex[:10]}"


def spawn_tracker(
    url: str, env: dict[str, str], log_path: Path, database_url: str
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faststream",
                "run",
                "tracker_service.main:create_app",
                "--factory",
            ],
            env={
                **os.environ,
                **env,
                "RABBITMQ_URL": url,
                "TRACKER_DATABASE_URL": database_url,
                "TRACKER_LOG_FORMAT": "json",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def tracker_process(
    url: str, env: dict[str, str], log_path: Path, database_url: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The tracker as its own process, once it consumes its queue."""
    probe = QueueProbe(url)
    process = spawn_tracker(url, env, log_path, database_url)
    try:
        give_up_at = time.monotonic() + 60
        while not await probe.consumers(TRACKER_QUEUE):
            assert process.poll() is None, "the tracker exited; see tracker.log"
            assert time.monotonic() < give_up_at, "the tracker did not start consuming"
            await asyncio.sleep(0.2)
        yield process
    finally:
        await probe.close()
        stop_process(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(
    module_broker_url: str, tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> AsyncIterator[TracedSystem]:
    directory = tmp_path_factory.mktemp("traced")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    service_env = {name: {f"{name.upper()}_LOG_FORMAT": "json"} for name in PARTICIPANTS}
    service_env["payment"]["PAYMENT_APPROVED_TOKENS"] = json.dumps(["tok_visa", PRIVATE_TOKEN])
    tracker_db = f"sqlite+aiosqlite:///{directory}/tracker.db"
    async with (
        service_processes(
            module_broker_url,
            directory,
            sqlite_databases(directory),
            env=env,
            service_env=service_env,
        ) as procs,
        tracker_process(module_broker_url, env, directory / "tracker.log", tracker_db) as tracker,
        SagaClient(module_broker_url, ORDER_SAGA, producer="trace-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=90)
        yield TracedSystem(procs, client, watch, receiver, directory, tracker_db, tracker)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_fulfilled_saga_is_one_trace_whose_steps_form_a_causal_chain(
    traced: TracedSystem,
) -> None:
    events = await traced.run(sample_order(Scenario.FULFILLED))
    saga_id = events[0].context.saga_id
    assert events[-1].event_type == "order.fulfilled"

    spans = await traced.spans_until(
        saga_id, lambda found: set(saga_spans(found, "step")) == set(FORWARD)
    )

    assert len({s.trace_id for s in spans}) == 1, "the saga's spans are spread over traces"
    steps = saga_spans(spans, "step")
    assert set(steps) == set(FORWARD)
    assert {s.service for s in spans} >= set(PARTICIPANTS)
    for name, span in steps.items():
        assert span.attributes["saga.id"] == str(saga_id)
        assert span.attributes["saga.outcome"] == "completed"
        assert span.attributes["saga.participant"] == ORDER_SAGA.step(name).participant
    for earlier, later in itertools.pairwise(FORWARD):
        assert_caused_by(steps[later], steps[earlier], spans)
    # The client did not trace: the saga's trace is named after the saga, and starts where
    # the saga entered the system, with everyone who consumed order.created (inventory, and
    # the tracker) under one shared parent that was never exported.
    assert spans[0].trace_id == saga_id.hex
    exported = {s.span_id for s in spans}
    entries = [s for s in spans if s.parent_id not in exported]
    assert {(s.kind, s.service) for s in entries} == {
        (CONSUMER, "inventory"),
        (CONSUMER, "tracker"),
    }
    assert len({s.parent_id for s in entries}) == 1


OLD_MESSAGING_NAMES = (
    "messaging.destination",
    "messaging.operation",
    "messaging.temp_destination",
    "messaging.conversation_id",
    "messaging.message_id",
    "net.peer.name",
)


@pytest.mark.asyncio(loop_scope="module")
async def test_saga_order_starts_the_trace_with_a_root_span_and_current_conventions(
    traced: TracedSystem, module_broker_url: str
) -> None:
    saga = Path(sys.executable).with_name("saga")
    env = {
        **os.environ,
        "RABBITMQ_URL": module_broker_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": traced.receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [str(saga), "order", "--wait", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saga_id = uuid.UUID(json.loads(result.stdout)["saga_id"])

    spans = await traced.spans_until(
        saga_id, lambda found: set(saga_spans(found, "step")) == set(FORWARD)
    )
    # One trace, named after the saga, that begins with an exported root span.
    assert {s.trace_id for s in spans} == {saga_id.hex}
    [root] = [s for s in spans if not s.parent_id]
    assert (root.name, root.service, root.kind) == (
        "saga start order_fulfilment",
        "saga-cli",
        PRODUCER,
    )
    assert root.attributes["saga.id"] == str(saga_id)
    exported = {s.span_id for s in spans}
    assert all(s.parent_id in exported for s in spans if s is not root)

    [publish] = [s for s in spans if s.parent_id == root.span_id]
    assert publish.name == "publish orders"
    assert publish.kind == PRODUCER
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.operation.name"] == "publish"
    assert publish.attributes["messaging.destination.name"] == "orders"
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "order.created"
    assert publish.attributes["messaging.message.conversation_id"] == str(saga_id)
    assert uuid.UUID(publish.attributes["messaging.message.id"])
    assert publish.attributes["messaging.message.body.size"] > 0
    assert publish.attributes["server.port"] > 0

    # One consumer span per delivery, the step span under it.
    [consume] = [s for s in spans if s.service == "inventory" and s.parent_id == publish.span_id]
    assert consume.name == "process orders"
    assert consume.kind == CONSUMER
    assert consume.attributes["messaging.operation.type"] == "process"
    assert consume.attributes["messaging.operation.name"] == "deliver"
    assert consume.attributes["messaging.destination.name"] == "orders"
    assert (
        consume.attributes["messaging.destination.subscription.name"] == "inventory.order.created"
    )
    assert consume.attributes["messaging.rabbitmq.destination.routing_key"] == "order.created"
    assert consume.attributes["messaging.rabbitmq.message.delivery_tag"] >= 1
    step = saga_spans(spans, "step")["reserve_stock"]
    assert step.parent_id == consume.span_id
    for span in spans:
        assert not set(OLD_MESSAGING_NAMES) & set(span.attributes), span

    # service.version on every service's resource
    versions = {r["service.name"]: r.get("service.version") for r in traced.receiver.resources}
    for service in (*PARTICIPANTS, "saga-cli"):
        assert versions[service] == "0.1.0", versions


@pytest.mark.asyncio(loop_scope="module")
async def test_a_failed_sagas_compensations_are_in_its_trace_in_reverse_order(
    traced: TracedSystem,
) -> None:
    events = await traced.run(sample_order(Scenario.UNREACHABLE))
    saga_id = events[0].context.saga_id
    assert events[-1].event_type == "order.cancelled"
    undone = ("ship_order", "charge_payment", "reserve_stock")

    def complete(found: list[ExportedSpan]) -> bool:
        return set(saga_spans(found, "compensation")) == set(undone) and bool(
            saga_spans(found, "reaction")
        )

    spans = await traced.spans_until(saga_id, complete)

    assert len({s.trace_id for s in spans}) == 1, "the backward path left the saga's trace"
    steps = saga_spans(spans, "step")
    compensations = saga_spans(spans, "compensation")
    [notice] = saga_spans(spans, "reaction").values()
    assert set(compensations) == set(undone)
    failed = steps["confirm_order"]
    assert failed.attributes["saga.outcome"] == "failed"
    assert failed.attributes["saga.failure.reason"] == "contact_unreachable"
    # A business failure is the flow working as designed: not an error span.
    assert failed.status != Status.StatusCode.STATUS_CODE_ERROR
    assert ("saga.step_failed", {"saga.failure.reason": "contact_unreachable"}) in failed.events
    assert_caused_by(compensations["ship_order"], failed, spans)
    for earlier, later in itertools.pairwise(undone):
        assert_caused_by(compensations[later], compensations[earlier], spans)
    assert all(c.attributes["saga.outcome"] == "compensated" for c in compensations.values())
    assert_caused_by(notice, compensations["reserve_stock"], spans)
    assert compensations["ship_order"].start < compensations["charge_payment"].start
    assert compensations["charge_payment"].start < compensations["reserve_stock"].start


@pytest.mark.asyncio(loop_scope="module")
async def test_saga_status_names_the_trace_that_holds_the_saga(traced: TracedSystem) -> None:
    events = await traced.run(sample_order(Scenario.CARD_DECLINED))
    saga_id = events[0].context.saga_id
    spans = await traced.spans_until(
        saga_id, lambda found: "reserve_stock" in saga_spans(found, "compensation")
    )
    [trace_id] = {s.trace_id for s in spans}

    async def status() -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from sagakit.cli import main; main()",
            "status",
            str(saga_id),
            "--json",
            env={**os.environ, "TRACKER_DATABASE_URL": traced.tracker_db},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        return json.loads(out) if process.returncode == 0 else {}

    give_up_at = time.monotonic() + 20
    while (shown := await status()).get("state") != "cancelled" and time.monotonic() < give_up_at:
        await asyncio.sleep(0.3)
    assert shown["state"] == "cancelled"
    assert shown["trace_id"] == trace_id
    assert (shown["failed_step"], shown["failure_reason"]) == ("charge_payment", "card_declined")
    assert [e["event_type"] for e in shown["timeline"]] == [e.event_type for e in events]
    # The tracker consumed every event of the saga, inside the saga's trace.
    tracked = [s for s in spans if s.service == "tracker" and s.kind == CONSUMER]
    assert len(tracked) == len(events)


@pytest.mark.asyncio(loop_scope="module")
async def test_no_personal_data_in_spans_or_logs(traced: TracedSystem) -> None:
    fulfilled = private_order(PRIVATE_TOKEN)
    unreachable = private_order(PRIVATE_TOKEN).model_copy(
        update={"customer": Customer(id="cust-8", email="pii.nobody@mailhost.invalid")}
    )
    sagas = []
    for order in (fulfilled, unreachable):
        events = await traced.run(order)
        sagas.append((order, events[0].context.saga_id, events[-1].event_type))
    assert [end for _, _, end in sagas] == ["order.fulfilled", "order.cancelled"]
    for _, saga_id, end in sagas:
        handler = "step" if end == "order.fulfilled" else "reaction"
        await traced.spans_until(saga_id, functools.partial(_has_spans, handler=handler))
    # Stopping the services flushes their last spans and log lines.
    await traced.procs.stop()
    stop_process(traced.tracker)

    spans = traced.receiver.snapshot()
    assert spans, "nothing was exported"
    span_text = "\n".join(s.text() for s in spans) + json.dumps(traced.receiver.resources)
    log_lines = [
        line for path in traced.log_files for line in path.read_text().splitlines() if line.strip()
    ]
    assert log_lines
    records = [json.loads(line) for line in log_lines]  # every line is a JSON object
    assert any(r["saga_id"] == str(sagas[0][1]) for r in records)
    log_text = "\n".join(log_lines)
    for order, _, _ in sagas:
        secrets = {
            "email": order.customer.email,
            "street": order.shipping_address.line1,
            "postal code": order.shipping_address.postal_code,
            "name": order.shipping_address.name,
            "payment token": order.payment_method,
        }
        for what, value in secrets.items():
            assert value not in span_text, f"the {what} appears in an exported span"
            assert value not in log_text, f"the {what} appears in a service's log"


class GrpcReceiver:
    """An OTLP/gRPC trace receiver on 127.0.0.1, like a collector's port 4317."""

    def __init__(self, sink: OtlpReceiver) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(  # noqa: N802  (the gRPC method's name)
                self, request: ExportTraceServiceRequest, context: Any
            ) -> ExportTraceServiceResponse:
                sink.accept(request)
                return ExportTraceServiceResponse()

        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        # opentelemetry-proto's generated gRPC module has no annotations.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Servicer(), self.server
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> GrpcReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop(grace=None).wait()


@pytest.mark.asyncio(loop_scope="module")
async def test_spans_export_over_otlp_grpc_too(tmp_path: Path) -> None:
    sink = OtlpReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",  # set below, once the port is known
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with fresh_broker_url() as url, GrpcReceiver(sink) as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
        async with (
            service_processes(url, tmp_path, sqlite_databases(tmp_path), env=env) as procs,
            SagaClient(url, ORDER_SAGA, producer="grpc-test") as client,
            client.watch(),  # binds every event, so inventory's output is routable
        ):
            await procs.start("inventory", timeout=60)
            started = await client.start(sample_order())
            saga_id = started.context.saga_id
            give_up_at = time.monotonic() + 20
            while not saga_spans(spans_of(sink.snapshot(), saga_id), "step"):
                assert time.monotonic() < give_up_at, "no span arrived over gRPC"
                await asyncio.sleep(0.2)
    [step] = saga_spans(spans_of(sink.snapshot(), saga_id), "step").values()
    assert step.service == "inventory"
    assert step.attributes["saga.step"] == "reserve_stock"
    assert step.trace_id == saga_id.hex
