"""Crash points for fault-injection tests: a real SIGKILL at a named point, armed by env.

``SAGAKIT_CRASH_AT=<point>:<event_type>[,<point>:<event_type>…]`` arms points;
``SAGAKIT_CRASH_MARKER=<path>`` makes each fire once (``<path>.<point>.<event_type>`` is
written just before the kill, so the restarted process runs normally). Unset, a crash point
costs one set lookup.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum
from pathlib import Path


class CrashPoint(StrEnum):
    """Where in handling an event a process can be killed."""

    BEFORE_PUBLISH = "before_publish"  # committed, outbox not yet published, not acked
    BEFORE_ACK = "before_ack"  # committed and published, not acked
    MID_COMPENSATION = "mid_compensation"  # compensation handler ran, transaction not committed


def _armed() -> frozenset[tuple[str, str]]:
    points = set()
    for item in os.environ.get("SAGAKIT_CRASH_AT", "").split(","):
        point, _, event_type = item.strip().partition(":")
        if point and event_type:
            points.add((point, event_type))
    return frozenset(points)


_ARMED = _armed()


def crash_point(point: CrashPoint, event_type: str) -> None:
    """Kill this process with SIGKILL if ``point`` is armed for ``event_type``."""
    if not _ARMED or (point.value, event_type) not in _ARMED:
        return
    marker = os.environ.get("SAGAKIT_CRASH_MARKER")
    if marker:
        path = Path(f"{marker}.{point.value}.{event_type}")
        if path.exists():
            return
        path.write_text("fired\n")
    os.kill(os.getpid(), signal.SIGKILL)
