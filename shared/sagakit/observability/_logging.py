"""Logging: every line written while handling an event carries saga id, event type and step.

The fields come from sagakit's own context while a handler runs, and from FastStream's
message context around it (FastStream's "Received" and "Processed" lines), so that every
line of one delivery can be found by saga id. Lines are human-readable text by default, or
one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from opentelemetry import trace

from sagakit._context import current_scope
from sagakit.broker._identity import MessageIdentity, identify

logger = logging.getLogger("sagakit")

NO_VALUE = "-"

# FastStream's logger names: its app and broker loggers do not propagate by default, and
# write with a format of their own; sagakit routes them through the root handler instead.
FASTSTREAM_LOGGERS = ("faststream", "faststream.access", "faststream.access.rabbit")
BROKER_LOGGER = "faststream.access.rabbit"


class Delivery(NamedTuple):
    """What a log line says about the message being handled."""

    saga_id: str
    event_type: str
    step: str


# Where a log line finds the delivery being handled when sagakit has not validated its saga
# yet (FastStream's own lines come before SagaMiddleware's scope): one callable per running
# broker (see ``watch_deliveries``).
_delivery_sources: list[Callable[[], Delivery | None]] = []
_IDENTITY_ATTRIBUTE = "_sagakit_identity"


def watch_deliveries(
    context: Any, queues: Mapping[str, tuple[str, str]]
) -> Callable[[], Delivery | None]:
    """Let log lines find the message a broker is handling, from FastStream's context.

    Args:
        context: The broker's FastStream ``ContextRepo`` (``broker.context``).
        queues: Queue name to (event type, step) of each subscriber.

    Returns:
        The source that was registered; pass it to ``unwatch_deliveries`` when stopping.
    """

    def current_delivery() -> Delivery | None:
        message = context.get_local("message")
        if message is None or not hasattr(message, "headers"):
            return None
        identity = _identity_of(message)
        log_context = context.get_local("log_context") or {}
        queue_event_type, step = queues.get(str(log_context.get("queue", "")), ("", NO_VALUE))
        event_type = identity.event_type or queue_event_type or NO_VALUE
        return Delivery(identity.saga_id or NO_VALUE, event_type, step)

    _delivery_sources.append(current_delivery)
    return current_delivery


def _identity_of(message: Any) -> MessageIdentity:
    # The body is read once per delivery, and only when a line is written before sagakit
    # has validated it (FastStream's own lines, a message being parked).
    cached = getattr(message, _IDENTITY_ATTRIBUTE, None)
    if isinstance(cached, MessageIdentity):
        return cached
    raw = getattr(message, "raw_message", None)
    identity = identify(
        body=getattr(message, "body", None),
        headers=message.headers,
        # As it came on the wire: FastStream makes one up for a message without any.
        correlation_id=getattr(raw, "correlation_id", None),
        message_type=getattr(raw, "type", None),
    )
    with contextlib.suppress(AttributeError):
        setattr(message, _IDENTITY_ATTRIBUTE, identity)
    return identity


def unwatch_deliveries(source: Callable[[], Delivery | None]) -> None:
    """Forget a source registered by ``watch_deliveries``."""
    if source in _delivery_sources:
        _delivery_sources.remove(source)


def current_delivery() -> Delivery | None:
    """The saga id, event type and step of the event handled in this task, if any."""
    scope = current_scope()
    if scope is not None and scope.saga is not None:
        return Delivery(
            str(scope.saga.saga_id), scope.event_type or NO_VALUE, scope.step or NO_VALUE
        )
    for source in _delivery_sources:
        found = source()
        if found is not None:
            return found
    return None


class SagaLogFilter(logging.Filter):
    """Adds ``saga_id``, ``event_type``, ``step``, ``trace_id`` and ``span_id`` to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        delivery = current_delivery()
        # A field the caller passed in ``extra`` (a line about a saga, written outside
        # its handling) is kept.
        fields = record.__dict__
        fields.setdefault("saga_id", delivery.saga_id if delivery else NO_VALUE)
        fields.setdefault("event_type", delivery.event_type if delivery else NO_VALUE)
        fields.setdefault("step", delivery.step if delivery else NO_VALUE)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = record.span_id = None
        return True


def rfc3339_utc(record: logging.LogRecord) -> str:
    """When ``record`` was made: RFC 3339 in UTC, to the millisecond (``…T07:48:25.123Z``)."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service and the saga fields."""

    def __init__(self, *, service: str = NO_VALUE) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339_utc(record),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
            "saga_id": getattr(record, "saga_id", NO_VALUE),
            "event_type": getattr(record, "event_type", NO_VALUE),
            "step": getattr(record, "step", NO_VALUE),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            line["trace_id"] = trace_id
            line["span_id"] = getattr(record, "span_id", None)
        message_id = getattr(record, "message_id", None)
        if message_id:
            line["message_id"] = message_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [saga=%(saga_id)s %(event_type)s %(step)s%(trace)s]"
    " %(message)s"
)


class TextLineFormatter(logging.Formatter):
    """``TEXT_FORMAT``: the JSON lines' time (RFC 3339, UTC, milliseconds) and fields, with
    ``trace=… span=…`` inside the brackets when a span is current."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339_utc(record)

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None)
        span_id = getattr(record, "span_id", None)
        record.trace = f" trace={trace_id} span={span_id}" if trace_id else ""
        for name in ("saga_id", "event_type", "step"):
            if not hasattr(record, name):  # a record that did not pass SagaLogFilter
                setattr(record, name, NO_VALUE)
        return super().format(record)


def saga_log_handler(
    *, service: str, log_format: str = "text", stream: Any = None
) -> logging.Handler:
    """A handler that writes text or JSON lines with the saga fields to ``stream``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(SagaLogFilter())
    handler.setFormatter(
        JsonLineFormatter(service=service) if log_format == "json" else TextLineFormatter()
    )
    return handler


_PARAMETER_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "asyncpg")


def configure_logging(*, service: str, log_format: str = "text", level: str = "INFO") -> None:
    """Send the root logger, FastStream's loggers included, to stderr as text or JSON lines."""
    root = logging.getLogger()
    root.handlers[:] = [saga_log_handler(service=service, log_format=log_format)]
    root.setLevel(level.upper())
    for name in FASTSTREAM_LOGGERS:
        faststream_logger = logging.getLogger(name)
        faststream_logger.handlers.clear()
        faststream_logger.propagate = True
    logging.getLogger(service).setLevel(level.upper())
    # At DEBUG these would print SQL parameters, i.e. outbox bodies with personal data;
    # at INFO sqlalchemy.engine writes every statement, a dozen lines per message.
    for name in _PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
