"""Generic commands of the ``saga`` script (flow-independent)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import app
from ._spec_ref import load_spec

SpecOption = Annotated[
    str | None, typer.Option("--spec", help="module:ATTRIBUTE of the SagaSpec (or $SAGA_SPEC)")
]


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
