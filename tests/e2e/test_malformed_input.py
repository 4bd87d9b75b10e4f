"""Hostile input on the real broker: a few hundred generated malformed messages, with odd
headers and properties, published with real routing keys to the running services.

Every one must be parked in the dead-letter queue of the service that consumed it, with a
reason; no consumer may die or hang; and valid sagas published before, between and after
them, some with odd headers of their own, must still complete. Tracing is on (to a sink),
as in the compose deployment, so that the aio-pika instrumentation reads every header too.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import pamqp.encode
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit.broker import REASON_HEADER, dead_letter_queue_name
from sagakit.client import SagaClient
from sagakit.testing import QueueProbe, consumed_queues

from .conftest import PARTICIPANTS, service_processes, sqlite_databases

pytestmark = pytest.mark.e2e

MALFORMED = 300
MAX_MESSAGE_BYTES = 256 * 1024  # the services' default max_message_bytes
CASE_HEADER = "x-test-malformed-case"

# Which participant consumes each event type: a message published with that routing key
# must end up parked in that participant's dead-letter queue.
CONSUMER: dict[str, str] = {}
for _participant in PARTICIPANTS:
    for _queue in consumed_queues(ORDER_SAGA, _participant):
        _event_type = _queue.removeprefix(f"{_participant}.")
        assert _event_type not in CONSUMER, f"{_event_type} has two consumers"
        CONSUMER[_event_type] = _participant
ROUTING_KEYS = sorted(CONSUMER)

# Header names the services, the broker or the tracing propagators give a meaning to.
MEANINGFUL_HEADERS = [
    "traceparent",
    "tracestate",
    "baggage",
    "x-saga-id",
    "x-saga-attempt",
    "x-saga-dead-letter-reason",
    "x-saga-origin-queue",
    "x-saga-first-failure-at",
    "x-saga-last-error",
    "x-death",
    "x-delivery-count",
]


@dataclass(frozen=True)
class Case:
    """One message to publish; ``reasons``: the acceptable parking reason prefixes."""

    kind: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]
    reasons: tuple[str, ...]
    detail: str = ""

    def describe(self, number: int) -> str:
        return f"case {number} ({self.kind} {self.detail} on {self.routing_key})"


# -- generating messages ---------------------------------------------------------------


class ForeignDouble(float):
    """A 64-bit float header, as Java or .NET clients send them (pamqp sends 32 bits)."""


class ForeignBytes(bytes):
    """A long-string header that is not UTF-8, which other clients may send."""


def _encode_foreign(value: Any) -> bytes:
    if isinstance(value, ForeignDouble):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, ForeignBytes):
        return b"S" + struct.pack(">I", len(value)) + value
    return _pamqp_encode_table_value(value)


_pamqp_encode_table_value = pamqp.encode.encode_table_value


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


header_scalars = st.one_of(
    st.floats(min_value=1e39, max_value=1e300).map(ForeignDouble),
    st.binary(min_size=1, max_size=20).filter(_not_utf8).map(ForeignBytes),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),  # pamqp sends 32-bit floats
    st.text(max_size=40),
    st.binary(max_size=40).map(bytearray),  # an AMQP byte array
    st.decimals(min_value=-(10**5), max_value=10**5, places=2),
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
header_values = st.recursive(
    header_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=12), children, max_size=3)
    ),
    max_leaves=8,
)
header_names = st.sampled_from(MEANINGFUL_HEADERS) | st.text(min_size=1, max_size=24)
odd_headers = st.dictionaries(header_names, header_values, max_size=5)
odd_properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": st.sampled_from(["application/json", "text/plain", "", "x/\u00e9"]),
        "content_encoding": st.sampled_from(["gzip", "identity", "utf-16"]),
        "type": st.text(max_size=30),
        "message_id": st.text(max_size=40),
        "correlation_id": st.text(max_size=40),
        "app_id": st.text(max_size=20),
        "priority": st.integers(min_value=0, max_value=9),
        "timestamp": st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        # Where FastStream would send an RPC reply: a service must never answer.
        "reply_to": st.sampled_from(
            ["payment.inventory.reserved", "inventory.dlq", "nowhere.at.all", ""]
        ),
        "delivery_mode": st.sampled_from(
            [aio_pika.DeliveryMode.NOT_PERSISTENT, aio_pika.DeliveryMode.PERSISTENT]
        ),
    },
)

# Paths of required fields, and values that can never validate there.
REQUIRED_PATHS = [
    ("event_id",),
    ("event_type",),
    ("schema_version",),
    ("occurred_at",),
    ("producer",),
    ("context",),
    ("payload",),
    ("context", "saga_id"),
    ("context", "saga_type"),
    ("context", "steps"),
]
wrong_values = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=3),  # [] would be a valid list of steps
    st.dictionaries(st.sampled_from(["bogus", "x"]), st.integers(), max_size=2),
)


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _dump(document: Any) -> bytes:
    return json.dumps(document).encode()


@st.composite
def malformed(draw: st.DrawFn, templates: dict[str, dict[str, Any]]) -> Case:
    routing_key = draw(st.sampled_from(ROUTING_KEYS))
    valid = templates[routing_key]
    kind = draw(
        st.sampled_from(
            [
                "random_bytes",
                "truncated_json",
                "json_not_an_object",
                "wrong_type",
                "unknown_event_type",
                "unsupported_schema_version",
                "missing_saga_id",
                "unknown_saga_type",
                "huge",
                "deeply_nested",
            ]
        )
    )
    reasons: tuple[str, ...]
    detail = ""
    if kind == "random_bytes":
        body = draw(st.binary(max_size=512))
        reasons = ("undecodable", "schema_invalid")
    elif kind == "truncated_json":
        text = _dump(valid)
        body = text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]
        reasons = ("undecodable", "schema_invalid")
    elif kind == "json_not_an_object":
        body = _dump(
            draw(st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.integers()))
        )
        reasons = ("schema_invalid",)
    elif kind == "wrong_type":
        path = draw(st.sampled_from(REQUIRED_PATHS))
        wrong = draw(wrong_values)
        body = _dump(_set(valid, path, wrong))
        reasons = ("schema_invalid",)
        detail = f"{'.'.join(path)}={wrong!r}"
    elif kind == "unknown_event_type":
        other = draw(st.sampled_from(sorted(ORDER_SAGA.events)) | st.text(min_size=1, max_size=30))
        if other == routing_key:
            other += ".v2"
        body = _dump(_set(valid, ("event_type",), other))
        reasons = ("unexpected_event_type",)
    elif kind == "unsupported_schema_version":
        version = draw(st.integers(min_value=2, max_value=2**31))
        body = _dump(_set(valid, ("schema_version",), version))
        reasons = ("unsupported_schema_version",)
    elif kind == "missing_saga_id":
        context = {k: v for k, v in valid["context"].items() if k != "saga_id"}
        if draw(st.booleans()):
            context["saga_id"] = None
        body = _dump(_set(valid, ("context",), context))
        reasons = ("schema_invalid",)
    elif kind == "unknown_saga_type":
        saga_type = draw(st.text(min_size=1, max_size=30).filter(lambda t: t != "order_fulfilment"))
        body = _dump(_set(valid, ("context", "saga_type"), saga_type))
        reasons = ("unknown_saga_type",)
    elif kind == "deeply_nested":
        depth = draw(st.integers(min_value=5_000, max_value=40_000))  # under the size limit
        body = draw(st.sampled_from([b"[", b'{"a":'])) * depth
        reasons = ("undecodable", "unprocessable")
    else:
        # Valid in every other way: only the size is wrong.
        size = draw(st.integers(min_value=MAX_MESSAGE_BYTES + 1, max_value=MAX_MESSAGE_BYTES * 2))
        padded = _set(valid, ("padding",), "")
        body = _dump(_set(valid, ("padding",), "x" * (size - len(_dump(padded)))))
        reasons = ("too_large",)
    return Case(
        kind=kind,
        routing_key=routing_key,
        body=body,
        headers=draw(odd_headers),
        properties=draw(odd_properties),
        reasons=reasons,
        detail=detail,
    )


def generate(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same ones on every run."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


# -- a trace sink ----------------------------------------------------------------------


@pytest.fixture
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- the test --------------------------------------------------------------------------


@dataclass
class Parked:
    by_participant: dict[str, list[aio_pika.abc.AbstractIncomingMessage]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def count(self) -> int:
        return sum(len(v) for v in self.by_participant.values())


async def _drain(channel: aio_pika.abc.AbstractChannel, parked: Parked) -> None:
    for participant in PARTICIPANTS:
        queue = await channel.get_queue(dead_letter_queue_name(participant), ensure=False)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            parked.by_participant[participant].append(message)


def _case_of(message: aio_pika.abc.AbstractIncomingMessage) -> int | None:
    value = (message.headers or {}).get(CASE_HEADER)
    return int(value) if isinstance(value, str) and value.isdigit() else None


async def _publish_valid(
    exchange: aio_pika.abc.AbstractExchange,
    client: SagaClient,
    headers: dict[str, Any],
    properties: dict[str, Any],
) -> uuid.UUID:
    envelope = client.new_saga(sample_order(Scenario.FULFILLED))
    message = aio_pika.Message(
        envelope.encode(),
        headers={**headers, **envelope.amqp_headers()},
        **{**properties, "message_id": str(envelope.event_id), "delivery_mode": 2},
    )
    await exchange.publish(message, routing_key=envelope.event_type)
    return envelope.context.saga_id


async def test_malformed_messages_are_parked_with_a_reason_and_sagas_go_on(
    module_broker_url: str, tmp_path: Path, otlp_sink: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rabbitmq_url = module_broker_url  # a virtual host of this module's own
    began = time.monotonic()
    monkeypatch.setattr(pamqp.encode, "encode_table_value", _encode_foreign)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    async with (
        service_processes(rabbitmq_url, tmp_path, sqlite_databases(tmp_path), env=env) as procs,
        SagaClient(rabbitmq_url, ORDER_SAGA, producer="malformed-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=90)
        # Real events of every consumed type, to mutate: sagas that end every way.
        before = [
            (await client.start(sample_order(s))).context.saga_id
            for s in (
                Scenario.FULFILLED,
                Scenario.CARD_DECLINED,
                Scenario.NOT_SERVED,
                Scenario.UNREACHABLE,
            )
        ]
        ended = await watch.wait_all(before, timeout=30)
        templates: dict[str, dict[str, Any]] = {}
        for events in ended.values():
            for event in events:
                templates.setdefault(event.event_type, json.loads(event.encode()))
        assert set(ROUTING_KEYS) <= set(templates)

        cases: list[Case] = generate(malformed(templates), MALFORMED)
        valid_odd = generate(st.tuples(odd_headers, odd_properties), 6)
        assert len(cases) == MALFORMED

        connection = await aio_pika.connect(rabbitmq_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(ORDER_SAGA.exchange, ensure=False)
            valid: list[uuid.UUID] = []
            for number, case in enumerate(cases):
                if number % (MALFORMED // len(valid_odd)) == 0:
                    valid.append(await _publish_valid(exchange, client, *valid_odd[len(valid)]))
                message = aio_pika.Message(
                    case.body, headers={**case.headers, CASE_HEADER: str(number)}, **case.properties
                )
                await exchange.publish(message, routing_key=case.routing_key, mandatory=True)
            valid.append((await client.start(sample_order(Scenario.FULFILLED))).context.saga_id)

            ended = await watch.wait_all(valid, timeout=45)
            for saga_id, events in ended.items():
                assert events[-1].event_type == "order.fulfilled", saga_id

            parked = Parked()
            deadline = time.monotonic() + 30
            while parked.count() < MALFORMED and time.monotonic() < deadline:
                await _drain(channel, parked)
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # anything parked twice, or late, shows up now
            await _drain(channel, parked)
        finally:
            await connection.close()

        # Every consumer is alive and still consuming: none was killed or starved.
        assert all(procs.alive(name) for name in procs.names)
        probe = QueueProbe(rabbitmq_url)
        try:
            for participant in PARTICIPANTS:
                counts = await probe.counts(consumed_queues(ORDER_SAGA, participant))
                assert all(c >= 1 for c in counts.values()), (participant, counts)
        finally:
            await probe.close()

    problems: list[str] = []
    seen: Counter[int] = Counter()
    for participant, messages in parked.by_participant.items():
        for parked_message in messages:
            case_number = _case_of(parked_message)
            reason = str((parked_message.headers or {}).get(REASON_HEADER) or "")
            if case_number is None:
                problems.append(f"{participant}: parked a message that was not sent as malformed")
                continue
            seen[case_number] += 1
            case = cases[case_number]
            if CONSUMER[case.routing_key] != participant:
                problems.append(f"{case.describe(case_number)} parked by {participant}")
            if not reason.startswith(case.reasons):
                problems.append(f"{case.describe(case_number)}: reason {reason[:120]!r}")
    missing = [n for n in range(MALFORMED) if seen[n] == 0]
    twice = [n for n, count in seen.items() if count > 1]
    problems += [f"{cases[n].describe(n)} was not parked" for n in missing]
    problems += [f"{cases[n].describe(n)} was parked {seen[n]} times" for n in twice]
    assert problems == [], "\n".join(problems[:30])
    kinds = Counter(case.kind for case in cases)
    assert len(kinds) == 10
    assert time.monotonic() - began < 90
