"""Generic commands of the ``saga`` script (flow-independent)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import app
from ._spec_ref import SpecOption, load_spec


@app.command("spec")
def show_spec(spec: SpecOption = None) -> None:
    """Print the flow's steps: trigger, success, failure and compensation events."""
    flow = load_spec(spec)
    table = Table(title=f"{flow.saga_type} on exchange {flow.exchange!r}")
    for column in (
        "#",
        "step",
        "participant",
        "trigger",
        "success",
        "failure",
        "undo on",
        "undone",
    ):
        table.add_column(column)
    for number, step in enumerate(flow.steps, start=1):
        table.add_row(
            str(number),
            step.name,
            step.participant,
            step.trigger,
            step.success,
            step.failure,
            ", ".join(step.compensate_on) or "-",
            step.compensated or "-",
        )
    Console().print(table)
