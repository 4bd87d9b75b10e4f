"""Sampling the services with py-spy while they run, and summarising where the time went."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::\d+)?\)$")
# Paths shown from these on: installed packages, this repository, the standard library.
_MARKERS = ("site-packages/", f"{Path(__file__).resolve().parents[1]}/", "/lib/python3.11/")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["path"]
    for marker in _MARKERS:
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


class Profiler:
    """One ``py-spy record`` per process, stopped with SIGINT so that it writes its output."""

    def __init__(self, out_dir: Path, *, rate: int = 97) -> None:
        found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.executable = found
        self.out_dir = out_dir
        self.rate = rate
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, name: str) -> Path:
        return self.out_dir / f"{name}.collapsed"

    def start(self, name: str, pid: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = (self.out_dir / f"{name}.py-spy.log").open("wb")
        self._running[name] = subprocess.Popen(
            [
                self.executable,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--gil",
                "--output",
                str(self.path(name)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> dict[str, dict[str, Any]]:
        for process in self._running.values():
            process.send_signal(signal.SIGINT)
        summaries = {}
        for name, process in self._running.items():
            process.wait(timeout=60)
            if self.path(name).exists():
                summaries[name] = summarize(self.path(name))
        self._running.clear()
        return summaries


# Where a service's CPU goes, by part: a sample counts for the first part whose frames it
# contains (the database first: its frames sit under the handler's and the runtime's).
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "database (SQLAlchemy, driver, sagakit store)",
        ("sqlalchemy/", "sagakit/store/", "asyncpg/", "sqlite3/", "greenlet"),
    ),
    ("log lines", ("logging/__init__.py", "faststream/_internal/logger")),
    ("publishing events (FastStream, aio-pika)", ("OutboxRelay._publish_one",)),
    ("acking deliveries", ("RabbitMessage.ack",)),
    (
        "building events (pydantic, ids, JSON)",
        # The runtime's classes before and after it was split into modules (#14).
        (
            "SagaRuntime._emit",
            "SagaRuntime._envelope",
            "SagaRuntime._system_payload",
            "Events.emit",
            "Events.envelope",
            "Events.system_payload",
            "Events.cancellation",
        ),
    ),
    ("the service's handlers (own code)", ("create_participant.<locals>",)),
    ("sagakit runtime (rules, spans, metrics)", ("SagaRuntime._handle", "Dispatcher.handle")),
    ("FastStream consume path (middlewares, decoding, validation)", ("SubscriberUsecase.consume",)),
)
OTHER_PART = "AMQP client I/O, event loop, other"


def parts(path: Path) -> dict[str, float]:
    """The share of samples (percent) of each part of ``PARTS``, and of the rest."""
    counts = dict.fromkeys([*(name for name, _ in PARTS), OTHER_PART], 0)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        total += int(count_text)
        part = next((name for name, marks in PARTS if any(m in stack for m in marks)), OTHER_PART)
        counts[part] += int(count_text)
    return {name: round(100 * n / total, 1) if total else 0.0 for name, n in counts.items()}


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Cost by part, and top functions by self and by inclusive share of samples in a
    collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"samples": 0, "parts": {}, "self": [], "inclusive": []}

    def share(counter: Counter[str], limit: float) -> list[tuple[str, float]]:
        return [
            (name, round(100 * n / total, 1))
            for name, n in counter.most_common()
            if n / total <= limit
        ][:top]

    # Inclusive shares above 90% are the event loop and the thread runners: no news.
    return {
        "samples": total,
        "parts": parts(path),
        "self": share(own, 1.0),
        "inclusive": share(inclusive, 0.9),
    }
