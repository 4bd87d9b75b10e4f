"""``saga dlq``: list, replay and purge parked messages."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sagakit._dlq import DeadLetters
from sagakit._errors import BrokerUnavailable
from sagakit._settings import DEFAULT_RABBITMQ_URL

from . import app
from ._spec_ref import SpecOption, load_spec

dlq_app = typer.Typer(
    help="Messages parked in the services' dead-letter queues.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")

UrlOption = Annotated[
    str | None, typer.Option("--url", help="broker URL (default: $RABBITMQ_URL or local)")
]
ServiceOption = Annotated[
    list[str] | None, typer.Option("--service", "-s", help="only this service (repeatable)")
]


def _dead_letters(url: str | None, services: list[str] | None, spec: str | None) -> DeadLetters:
    names = services or list(load_spec(spec).participants())
    return DeadLetters(url or os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL), services=names)


def _fail(error: BrokerUnavailable) -> None:
    Console(stderr=True).print(f"[red]{error}[/red] (start one: rabbitmq-server -detached)")
    raise typer.Exit(3)


@dlq_app.command("list")
def list_parked(
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show parked messages: service, id, reason, saga, event type, first failure."""

    async def run() -> list[dict[str, str]]:
        async with _dead_letters(url, service, spec) as dead_letters:
            return [entry.as_dict() for entry in await dead_letters.parked()]

    try:
        entries = asyncio.run(run())
    except BrokerUnavailable as error:
        _fail(error)
        return
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    table = Table(title=f"{len(entries)} parked message(s)")
    for column in ("service", "id", "reason", "saga", "event type", "first failure"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e["service"], e["id"], e["reason"], e["saga_id"], e["event_type"], e["first_failure_at"]
        )
    Console().print(table)


@dlq_app.command("replay")
def replay(
    ids: Annotated[list[str] | None, typer.Argument(help="ids from `saga dlq list`")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every parked message")] = False,
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
) -> None:
    """Send parked messages back to the queue they came from."""
    if not ids and not replay_all:
        raise typer.BadParameter("name message ids, or pass --all")

    async def run() -> int:
        async with _dead_letters(url, service, spec) as dead_letters:
            return len(await dead_letters.replay(None if replay_all else ids))

    try:
        count = asyncio.run(run())
    except BrokerUnavailable as error:
        _fail(error)
        return
    typer.echo(f"replayed {count} message(s)")
    if ids and not replay_all and count < len(ids):
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge(
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete parked messages for good (asks first)."""
    if not yes:
        typer.confirm("Delete every parked message for good?", abort=True)

    async def run() -> int:
        async with _dead_letters(url, service, spec) as dead_letters:
            return await dead_letters.purge()

    try:
        count = asyncio.run(run())
    except BrokerUnavailable as error:
        _fail(error)
        return
    typer.echo(f"purged {count} message(s)")
