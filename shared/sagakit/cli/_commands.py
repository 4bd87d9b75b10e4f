"""Generic commands of the ``saga`` script (flow-independent)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sagakit.spec._spec import SagaSpec

from . import app
from ._spec_ref import SpecOption, load_spec

WideOption = Annotated[bool, typer.Option("--wide", help="one wide table instead of blocks")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def spec_as_json(flow: SagaSpec) -> dict[str, Any]:
    """The flow's steps as JSON: what ``saga spec --json`` prints."""
    return {
        "saga_type": flow.saga_type,
        "exchange": flow.exchange,
        "steps": [
            {
                "number": number,
                "step": step.name,
                "participant": step.participant,
                "trigger": step.trigger,
                "success": step.success,
                "failure": step.failure,
                "compensate_on": list(step.compensate_on),
                "compensated": step.compensated,
            }
            for number, step in enumerate(flow.steps, start=1)
        ],
    }


@app.command("spec")
def show_spec(
    spec: SpecOption = None, wide: WideOption = False, as_json: JsonOption = False
) -> None:
    """Print the flow's steps: trigger, success, failure and compensation events."""
    flow = load_spec(spec)
    if as_json:
        typer.echo(json.dumps(spec_as_json(flow), indent=2))
        return
    console = Console()
    title = f"{flow.saga_type} on exchange {flow.exchange!r}"
    if not wide:
        # A block per step fits 80 columns whatever the event names.
        console.print(f"[bold]{title}[/bold]")
        for number, step in enumerate(flow.steps, start=1):
            console.print(f"{number}. [bold]{step.name}[/bold] ({step.participant})")
            for label, value in (
                ("on", step.trigger),
                ("success", step.success),
                ("failure", step.failure),
                ("undo on", ", ".join(step.compensate_on) or "-"),
                ("undone", step.compensated or "-"),
            ):
                console.print(f"   {label:<8} {value}", highlight=False, soft_wrap=True)
        return
    table = Table(title=title)
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
        table.add_column(column, overflow="fold")
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
    console.print(table)
