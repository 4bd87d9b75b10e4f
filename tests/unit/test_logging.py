"""Log lines carry the saga id, event type and step of the event being handled."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from faststream._internal.logger.logger_proxy import RealLoggerObject
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry.sdk.trace import TracerProvider
from sagakit import SagaContext
from sagakit._context import DeliveryScope
from sagakit.observability import configure_logging, saga_log_handler
from sagakit.observability._logging import (
    BROKER_LOGGER,
    FASTSTREAM_LOGGERS,
    unwatch_deliveries,
    watch_deliveries,
)

RFC3339_MILLIS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """A logger that writes JSON lines, through sagakit's handler, into a buffer."""
    stream = io.StringIO()
    handler = saga_log_handler(service="unit", log_format="json", stream=stream)
    log = logging.getLogger(f"test.{uuid.uuid4().hex}")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield stream, log
    log.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_written_while_handling_carries_saga_id_event_type_and_step(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    saga = SagaContext.start("order_fulfilment")
    with DeliveryScope(saga=saga, event_type="inventory.reserved", step="charge_payment"):
        log.info("charging")
    log.info("idle")

    handling, idle = lines(stream)
    assert handling["message"] == "charging"
    assert handling["saga_id"] == str(saga.saga_id)
    assert handling["event_type"] == "inventory.reserved"
    assert handling["step"] == "charge_payment"
    assert handling["service"] == "unit"
    assert (idle["saga_id"], idle["event_type"], idle["step"]) == ("-", "-", "-")


def test_text_lines_carry_the_same_fields() -> None:
    stream = io.StringIO()
    log = logging.getLogger(f"test.{uuid.uuid4().hex}")
    log.addHandler(saga_log_handler(service="unit", stream=stream))
    log.propagate = False
    saga = SagaContext.start("order_fulfilment")
    with DeliveryScope(saga=saga, event_type="order.created", step="reserve_stock"):
        log.warning("short of stock")

    line = stream.getvalue()
    assert f"[saga={saga.saga_id} order.created reserve_stock] short of stock" in line
    assert "WARNING" in line
    assert RFC3339_MILLIS_UTC.fullmatch(line.split(" ", 1)[0])


def test_text_lines_name_the_trace_and_span_when_a_span_is_current() -> None:
    stream = io.StringIO()
    log = logging.getLogger(f"test.{uuid.uuid4().hex}")
    log.addHandler(saga_log_handler(service="unit", stream=stream))
    log.propagate = False
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span:
        log.warning("traced")
    log.warning("untraced")

    traced, untraced = stream.getvalue().splitlines()
    context = span.get_span_context()
    assert traced.endswith(
        f"[saga=- - - trace={context.trace_id:032x} span={context.span_id:016x}] traced"
    )
    assert untraced.endswith("[saga=- - -] untraced")


def test_json_lines_carry_the_trace_id_and_the_exception(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span:
        try:
            raise RuntimeError("database went away")
        except RuntimeError:
            log.exception("step failed")
    [line] = lines(stream)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "RuntimeError: database went away" in line["exception"]


def test_json_lines_carry_the_span_id_of_the_current_span_and_none_without_one(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as step:
        log.info("in the step")
        with tracer.start_as_current_span("publish") as publish:
            log.info("publishing")
    log.info("no span")

    in_step, publishing, untraced = lines(stream)
    assert in_step["span_id"] == format(step.get_span_context().span_id, "016x")
    assert publishing["span_id"] == format(publish.get_span_context().span_id, "016x")
    assert publishing["trace_id"] == in_step["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", publishing["span_id"])
    assert "trace_id" not in untraced
    assert "span_id" not in untraced


def _record_at(moment: datetime) -> logging.LogRecord:
    record = logging.LogRecord("sagakit.test", logging.INFO, __file__, 1, "hello", None, None)
    record.created = moment.timestamp()
    record.msecs = float(moment.microsecond // 1000)
    return record


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process' local time zone is not UTC (lines must be in UTC all the same)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_lines_are_timed_in_rfc3339_utc_to_the_millisecond(log_format: str) -> None:
    moment = datetime(2026, 12, 3, 7, 48, 25, 123456, tzinfo=UTC)
    handler = saga_log_handler(service="unit", log_format=log_format, stream=io.StringIO())
    written = handler.format(_record_at(moment))

    stamp = json.loads(written)["time"] if log_format == "json" else written.split(" ", 1)[0]
    assert stamp == "2026-12-03T07:48:25.123Z"
    assert RFC3339_MILLIS_UTC.fullmatch(stamp)
    assert datetime.fromisoformat(stamp) == moment.replace(microsecond=123000)


def test_the_millisecond_never_rounds_into_the_next_second() -> None:
    handler = saga_log_handler(service="unit", log_format="json", stream=io.StringIO())
    record = _record_at(datetime(2026, 12, 31, 23, 59, 59, 999900, tzinfo=UTC))

    assert json.loads(handler.format(record))["time"] == "2026-12-31T23:59:59.999Z"


async def test_faststreams_own_lines_carry_the_saga_fields_of_the_delivery(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    handler = log.handlers[0]
    broker_logger = logging.getLogger(f"test.broker.{uuid.uuid4().hex}")
    broker_logger.addHandler(handler)
    broker_logger.propagate = False
    broker_logger.setLevel(logging.INFO)
    broker = RabbitBroker(logger=broker_logger)
    exchange = RabbitExchange("orders")
    queue = RabbitQueue("payment.inventory.reserved", routing_key="inventory.reserved")

    @broker.subscriber(queue, exchange)
    async def charge(body: dict[str, str], message: RabbitMessage) -> None:
        broker_logger.info("in the handler, before sagakit sets the saga")

    source = watch_deliveries(
        broker.context, {queue.name: ("inventory.reserved", "charge_payment")}
    )
    saga_id = str(uuid.uuid4())
    try:
        async with TestRabbitBroker(broker) as test_broker:
            # The test broker swaps FastStream's logger for a mock; put the real one back.
            broker.config.logger.logger = RealLoggerObject(broker_logger)
            await test_broker.publish(
                {"any": "thing"},
                exchange=exchange,
                routing_key="inventory.reserved",
                headers={"x-saga-id": saga_id},
                correlation_id=saga_id,
            )
    finally:
        unwatch_deliveries(source)
    broker_logger.info("after the delivery")

    written = lines(stream)
    during = [line for line in written if line["message"] != "after the delivery"]
    assert [line["message"] for line in during][-3:] == [
        "Received",
        "in the handler, before sagakit sets the saga",
        "Processed",
    ]
    for line in during[-3:]:
        assert (line["saga_id"], line["event_type"], line["step"]) == (
            saga_id,
            "inventory.reserved",
            "charge_payment",
        )
    assert written[-1]["saga_id"] == "-"


def test_configure_logging_routes_faststreams_loggers_through_the_root_handler() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    saved_faststream = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in FASTSTREAM_LOGGERS
    }
    try:
        configure_logging(service="unit", log_format="json", level="debug")
        assert len(root.handlers) == 1
        assert root.level == logging.DEBUG
        for name in (*FASTSTREAM_LOGGERS, BROKER_LOGGER):
            faststream_logger = logging.getLogger(name)
            assert faststream_logger.handlers == []
            assert faststream_logger.propagate
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, (handlers, propagate) in saved_faststream.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate


def test_debug_logging_never_prints_sql_parameters() -> None:
    import logging as stdlib_logging

    from sagakit.observability import configure_logging

    root = stdlib_logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging(service="inventory", level="DEBUG")
        assert root.level == stdlib_logging.DEBUG
        for name in ("aiosqlite", "sqlalchemy.engine", "asyncpg"):
            assert not stdlib_logging.getLogger(name).isEnabledFor(stdlib_logging.DEBUG)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
