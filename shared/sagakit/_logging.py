"""Logging: every line written while handling an event carries saga id, event type and step."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

from ._context import current_saga

_handling: ContextVar[tuple[str, str] | None] = ContextVar("sagakit_handling", default=None)

logger = logging.getLogger("sagakit")


class SagaLogFilter(logging.Filter):
    """Adds ``saga_id``, ``event_type`` and ``step`` to each record from the current saga."""

    def filter(self, record: logging.LogRecord) -> bool:
        saga = current_saga()
        handling = _handling.get()
        record.saga_id = str(saga.saga_id) if saga else "-"
        record.event_type = handling[0] if handling else "-"
        record.step = handling[1] if handling else "-"
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "saga_id": getattr(record, "saga_id", "-"),
            "event_type": getattr(record, "event_type", "-"),
            "step": getattr(record, "step", "-"),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


TEXT_FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [saga=%(saga_id)s %(event_type)s %(step)s] %(message)s"
)


def configure_logging(*, service: str, log_format: str = "text", level: str = "INFO") -> None:
    """Send the root logger to stderr as text or JSON lines, with saga fields on each line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SagaLogFilter())
    handler.setFormatter(
        JsonLineFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(service).setLevel(level.upper())
