"""CPU time and peak memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    text = (_PROC / str(pid) / "stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far (processes gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def peak_rss_mib(pids: list[int]) -> float:
    """The sum of the peak resident set sizes (VmHWM) of ``pids``, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            status = (_PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def postgres_pid() -> int | None:
    """The PostgreSQL server's main process (a ``postgres`` whose parent is not one)."""
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            parent = _stat_fields(int(entry.name))[1]
            if (_PROC / parent / "comm").read_text().strip() != "postgres":
                return int(entry.name)
        except (OSError, IndexError):
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name."""
    for line in (_PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``preexec_fn``: the kernel sends SIGTERM to the child when its parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()
