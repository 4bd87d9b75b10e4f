"""The fault tier: the fault matrix (issue #12) and the private infrastructure it stands on.

The matrix reuses the chaos run's ledger, audit, hostile messages and store faults
(``sagakit_chaos``, tools/chaos).
"""

from __future__ import annotations

from typing import Any

import pytest

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
