"""``saga cancel`` and ``saga redrive``: steer a stalled saga (client/_steering.py says how).

They read the tracker's database for the saga's events and publish one message to the
participant whose step the saga waits on. Exit codes: 0 sent; 1 refused (the saga ended,
is unknown, or is being undone already for a cancel); 3 no broker answered.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from sagakit._exceptions import BrokerUnavailable, SagaError, SteeringRefused
from sagakit.client._steering import Action, SteeringPlan, steer
from sagakit.runtime._settings import shared_broker_url
from sagakit.tracker._store import tracker_store

from . import app
from ._spec_ref import SpecOption, load_spec
from ._status import DbOption, _database

UrlOption = Annotated[
    str | None, typer.Option("--url", help="broker URL (default: $RABBITMQ_URL[S], else local)")
]
SagaIdArgument = Annotated[str, typer.Argument(help="the saga id (context.saga_id)")]


def _run(action: Action, saga_id: str, db: str | None, url: str | None, spec: str | None) -> None:
    flow = load_spec(spec)
    console = Console()

    async def go() -> SteeringPlan:
        async with tracker_store(_database(db), spec=flow) as store:
            return await steer(store, url or shared_broker_url(), saga_id, action)

    try:
        sent = asyncio.run(go())
    except SteeringRefused as refused:
        console.print(f"[red]refused[/red]: {refused}")
        raise typer.Exit(1) from None
    except BrokerUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    except SagaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    what = "asked to fail" if action is Action.CANCEL else "sent again"
    console.print(
        f"{action.value}: {sent.participant} {what} {sent.step!r} of saga {sent.saga_id} "
        f"({sent.event.event_type} to {sent.queue})"
    )


@app.command("cancel")
def cancel(
    saga_id: SagaIdArgument,
    db: DbOption = None,
    url: UrlOption = None,
    spec: SpecOption = None,
) -> None:
    """Fail the step the saga waits on (reason cancelled_by_operator): it is undone."""
    _run(Action.CANCEL, saga_id, db, url, spec)


@app.command("redrive")
def redrive(
    saga_id: SagaIdArgument,
    db: DbOption = None,
    url: UrlOption = None,
    spec: SpecOption = None,
) -> None:
    """Send again the event the saga's stalled step (or compensation) did not take."""
    _run(Action.REDRIVE, saga_id, db, url, spec)
