"""The result of a chaos run: one dict (the JSON report) and the table printed from it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# Failures listed per check, in the table and the JSON; the rest are counted only.
_EXAMPLES = 5


def report_dict(
    *,
    seed: int,
    sagas: int,
    store: str,
    seconds: float,
    workdir: str,
    faults: dict[str, int],
    audit: Any,
    timeline: list[dict[str, Any]],
    unexpected_exits: list[str],
) -> dict[str, Any]:
    """Everything the run found, JSON-ready."""
    checks = [
        {
            "check": check.name,
            "verdict": check.verdict.value,
            "checked": check.checked,
            "failed": len(check.failures),
            "examples": check.failures[:_EXAMPLES],
        }
        for check in audit.checks
    ]
    return {
        "seed": seed,
        "sagas": sagas,
        "store": store,
        "seconds": round(seconds, 1),
        "workdir": workdir,
        "faults": dict(sorted(faults.items())),
        "outcomes": dict(sorted(audit.outcomes.items())),
        "cancel_reasons": dict(sorted(audit.cancel_reasons.items())),
        "parked_reasons": dict(sorted(audit.parked_reasons.items())),
        "stranded": audit.stranded,
        "wrongly_cancelled": audit.wrongly_cancelled,
        "lost": audit.lost,
        "applied_twice": audit.applied_twice,
        "wrong_outcomes": audit.wrong,
        "unexpected_exits": unexpected_exits,
        "checks": checks,
        "notes": audit.notes,
        "timeline": timeline,
    }


def print_report(report: dict[str, Any], *, console: Console | None = None) -> None:
    """The report as tables on the terminal."""
    console = console or Console()
    summary = Table(title=f"chaos run — seed {report['seed']}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("sagas", str(report["sagas"]))
    summary.add_row("store", report["store"])
    summary.add_row("duration", f"{report['seconds']:.0f} s")
    summary.add_section()
    for kind, count in report["faults"].items():
        summary.add_row(f"fault: {kind}", str(count))
    summary.add_section()
    for outcome, count in report["outcomes"].items():
        summary.add_row(f"outcome: {outcome}", str(count))
    for reason, count in report["cancel_reasons"].items():
        summary.add_row(f"  cancelled because {reason}", str(count))
    for reason, count in report["parked_reasons"].items():
        summary.add_row(f"  parked because {reason}", str(count))
    summary.add_section()
    for note, value in report["notes"].items():
        summary.add_row(note, str(value))
    if report["unexpected_exits"]:
        summary.add_row("services that died unasked", ", ".join(report["unexpected_exits"]))
    summary.add_section()
    summary.add_row("stranded (must be 0)", _flag(report["stranded"]))
    summary.add_row("wrongly cancelled (must be 0)", _flag(report["wrongly_cancelled"]))
    summary.add_row("lost (must be 0)", _flag(report["lost"]))
    summary.add_row("applied twice (must be 0)", _flag(report["applied_twice"]))
    summary.add_row("wrong outcomes (must be 0)", _flag(report["wrong_outcomes"]))
    console.print(summary)

    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("if it fails")
    checks.add_column("checked", justify="right")
    checks.add_column("failed", justify="right")
    for check in report["checks"]:
        checks.add_row(
            check["check"], check["verdict"], str(check["checked"]), _flag(check["failed"])
        )
    console.print(checks)
    for check in report["checks"]:
        for example in check["examples"]:
            console.print(f"[red]{check['check']}[/red]: {example}")


def _flag(count: int) -> str:
    return f"[bold red]{count}[/bold red]" if count else "[green]0[/green]"
