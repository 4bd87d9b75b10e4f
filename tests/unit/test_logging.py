"""Log lines carry the saga id, event type and step of the event being handled."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from faststream._internal.logger.logger_proxy import RealLoggerObject
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry.sdk.trace import TracerProvider
from sagakit import SagaContext, saga_scope
from sagakit._logging import (
    BROKER_LOGGER,
    FASTSTREAM_LOGGERS,
    _handling,
    configure_logging,
    saga_log_handler,
    unwatch_deliveries,
    watch_deliveries,
)


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
    token = _handling.set(("inventory.reserved", "charge_payment"))
    try:
        with saga_scope(saga):
            log.info("charging")
    finally:
        _handling.reset(token)
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
    token = _handling.set(("order.created", "reserve_stock"))
    try:
        with saga_scope(saga):
            log.warning("short of stock")
    finally:
        _handling.reset(token)

    line = stream.getvalue()
    assert f"[saga={saga.saga_id} order.created reserve_stock] short of stock" in line
    assert "WARNING" in line


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

    from sagakit._logging import configure_logging

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
