"""Crash points for fault-injection tests: a real SIGKILL at a named point, armed by env.

``SAGAKIT_CRASH_AT=<point>:<event_type>`` arms one point; ``SAGAKIT_CRASH_MARKER=<file>``
makes it fire once (the marker is written just before the kill, so the restarted process
runs normally). Unset, a crash point costs one dictionary lookup.
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


def _armed() -> tuple[str, str] | None:
    spec = os.environ.get("SAGAKIT_CRASH_AT")
    if not spec or ":" not in spec:
        return None
    point, _, event_type = spec.partition(":")
    return point, event_type


_ARMED = _armed()


def crash_point(point: CrashPoint, event_type: str) -> None:
    """Kill this process with SIGKILL if ``point`` is armed for ``event_type``."""
    if _ARMED is None or (point.value, event_type) != _ARMED:
        return
    marker = os.environ.get("SAGAKIT_CRASH_MARKER")
    if marker:
        path = Path(marker)
        if path.exists():
            return
        path.write_text(f"{point.value}:{event_type}\n")
    os.kill(os.getpid(), signal.SIGKILL)
