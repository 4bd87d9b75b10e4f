"""The fault tier: the fault matrix (issue #12) and the private infrastructure it stands on.

The matrix reuses the chaos run's ledger, audit, hostile messages and store faults, which
live in bench/ as top-level modules: bench goes on ``sys.path`` for this tier.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


MATRIX_SUMMARY = pytest.StashKey[list[dict[str, Any]]]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """A line per fault-matrix case: verdicts and time (the cases run at once)."""
    summary = config.stash.get(MATRIX_SUMMARY, None)
    if not summary:
        return
    terminalreporter.section("fault matrix")
    header = "stranded / wrongly cancelled / lost / applied twice / wrong"
    terminalreporter.write_line(f"{'case':<28} {'seconds':>7}  {header}")
    for case in summary:
        if case["skipped"]:
            counts = f"skipped: {case['skipped']}"
        else:
            verdicts = ("stranded", "wrongly_cancelled", "lost", "applied_twice", "wrong")
            counts = " / ".join(str(case[verdict]) for verdict in verdicts)
            if case["problems"]:
                counts += f"  ({len(case['problems'])} problem(s))"
        terminalreporter.write_line(f"{case['case']:<28} {case['seconds']:>7}  {counts}")
