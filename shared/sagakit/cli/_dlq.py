"""``saga dlq``: list, show, replay and purge parked messages.

Exit codes: 0 done; 1 an unknown message id, or messages that could not be replayed;
2 a usage error (an unknown service among them); 3 no broker answered.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sagakit._exceptions import BrokerRefused, BrokerUnavailable, SagaError
from sagakit.client._dead_letters import (
    DeadLetters,
    ParkedMessage,
    ReplayFailed,
    UnknownMessages,
    UnknownService,
)
from sagakit.client._redaction import redact_value, redacted_body
from sagakit.runtime._settings import shared_broker_url

from . import app
from ._spec_ref import SpecOption, load_spec

dlq_app = typer.Typer(
    help="Messages parked in the services' dead-letter queues.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")

T = TypeVar("T")

UrlOption = Annotated[
    str | None, typer.Option("--url", help="broker URL (default: $RABBITMQ_URL[S], else local)")
]
ServiceOption = Annotated[
    list[str] | None, typer.Option("--service", "-s", help="only this service (repeatable)")
]
ReasonOption = Annotated[
    str | None,
    typer.Option(
        "--reason",
        help="only this reason: a code (undecodable, compensation_failed, delivery_limit, "
        "headers_too_large…) or the reason's start",
    ),
]
SagaOption = Annotated[str | None, typer.Option("--saga", help="only this saga id")]
EventTypeOption = Annotated[str | None, typer.Option("--event-type", help="only this event type")]


class GroupBy(StrEnum):
    """What ``dlq list --group-by`` counts by."""

    REASON = "reason"
    SERVICE = "service"
    EVENT_TYPE = "event-type"
    ORIGIN = "origin"
    SAGA = "saga"


_GROUP_KEYS: dict[GroupBy, Callable[[ParkedMessage], str]] = {
    GroupBy.REASON: lambda entry: entry.reason_code,
    GroupBy.SERVICE: lambda entry: entry.service,
    GroupBy.EVENT_TYPE: lambda entry: entry.event_type,
    GroupBy.ORIGIN: lambda entry: entry.origin_queue,
    GroupBy.SAGA: lambda entry: entry.saga_id,
}


def _services(services: list[str] | None, spec: str | None) -> tuple[list[str], bool]:
    """The services to work on, and whether each must have a dead-letter queue."""
    if not services:
        try:
            return list(load_spec(spec).participants()), False
        except SagaError as error:
            raise typer.BadParameter(f"{error}; or name services with --service") from None
    try:
        participants = load_spec(spec).participants()
    except SagaError:
        return services, True  # no flow to check the names against: the broker will
    unknown = [name for name in services if name not in participants]
    if unknown:
        raise typer.BadParameter(
            f"unknown service {', '.join(unknown)} (participants: {', '.join(participants)})",
            param_hint="--service",
        )
    return services, True


def _run(
    url: str | None,
    services: list[str] | None,
    spec: str | None,
    work: Callable[[DeadLetters], Awaitable[T]],
) -> T:
    names, required = _services(services, spec)

    async def run() -> tuple[T, list[str]]:
        broker_url = url or shared_broker_url()
        async with DeadLetters(broker_url, services=names, required=required) as dead_letters:
            return await work(dead_letters), dead_letters.missing

    errors = Console(stderr=True)
    try:
        result, missing = asyncio.run(run())
    except BrokerRefused as error:
        errors.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(4) from None
    except BrokerUnavailable as error:
        errors.print(f"[red]{escape(str(error))}[/red] (start one: rabbitmq-server -detached)")
        raise typer.Exit(3) from None
    except UnknownService as error:
        errors.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    except UnknownMessages as error:
        errors.print(f"[red]{escape(str(error))}[/red] (see `saga dlq list`)")
        raise typer.Exit(1) from None
    for service in missing:
        errors.print(f"{service}: no dead-letter queue on this broker (never started here?)")
    return result


@dlq_app.command("list")
def list_parked(
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    reason: ReasonOption = None,
    saga: SagaOption = None,
    event_type: EventTypeOption = None,
    group_by: Annotated[
        GroupBy | None, typer.Option("--group-by", help="count parked messages by this")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show parked messages: service, id, reason, saga, event type, origin, first failure."""
    entries = _run(
        url,
        service,
        spec,
        lambda dead_letters: dead_letters.parked(
            reason=reason, saga_id=saga, event_type=event_type
        ),
    )
    if group_by is not None:
        _print_groups(entries, group_by, as_json=as_json)
        return
    if as_json:
        typer.echo(json.dumps([entry.as_dict() for entry in entries], indent=2))
        return
    table = Table(title=f"{len(entries)} parked message(s)")
    columns = ("service", "id", "reason", "saga", "event type", "origin", "first failure")
    for column in columns:
        table.add_column(column, overflow="fold")
    for entry in entries:
        replays = f" (replayed {entry.replays}x)" if entry.replays else ""
        table.add_row(
            *(
                escape(value)
                for value in (
                    entry.service,
                    entry.id,
                    entry.reason + replays,
                    entry.saga_id,
                    entry.event_type,
                    entry.origin_queue,
                    entry.first_failure_at,
                )
            )
        )
    Console().print(table)


def _print_groups(entries: list[ParkedMessage], group_by: GroupBy, *, as_json: bool) -> None:
    groups: dict[str, list[ParkedMessage]] = defaultdict(list)
    for entry in entries:
        groups[_GROUP_KEYS[group_by](entry) or "-"].append(entry)
    rows: list[dict[str, Any]] = [
        {
            group_by.value: key,
            "count": len(members),
            "services": sorted({member.service for member in members}),
            "sagas": len({member.saga_id for member in members if member.saga_id}),
            "first_failure_at": min(
                (member.first_failure_at for member in members if member.first_failure_at),
                default="",
            ),
        }
        for key, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(entries)} parked message(s) by {group_by.value}")
    for column in (group_by.value, "count", "services", "sagas", "first failure"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            escape(str(row[group_by.value])),
            str(row["count"]),
            escape(", ".join(row["services"])),
            str(row["sagas"]),
            escape(str(row["first_failure_at"])),
        )
    Console().print(table)


@dlq_app.command("show")
def show(
    ids: Annotated[list[str], typer.Argument(help="ids from `saga dlq list`")],
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    show_personal_data: Annotated[
        bool,
        typer.Option(
            "--show-personal-data", help="print e-mail, address, payment token… as they are"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print parked messages whole: why, where from, their death history, headers and body.

    Personal data (e-mail, names, addresses, payment tokens…) is masked unless
    --show-personal-data is given.
    """
    entries = _run(url, service, spec, lambda dead_letters: dead_letters.parked(ids))
    if as_json:
        typer.echo(
            json.dumps(
                [_shown(entry, show_personal_data=show_personal_data) for entry in entries],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    for number, entry in enumerate(entries):
        if number:
            typer.echo("")
        _print_entry(entry, show_personal_data=show_personal_data)


def _shown(entry: ParkedMessage, *, show_personal_data: bool) -> dict[str, Any]:
    headers = _json_safe(entry.headers)
    return {
        **entry.as_dict(),
        "headers": headers if show_personal_data else redact_value(headers),
        "body": redacted_body(entry.body, show_personal_data=show_personal_data),
        "body_bytes": len(entry.body),
    }


def _print_entry(entry: ParkedMessage, *, show_personal_data: bool) -> None:
    fields = [
        ("service", entry.service),
        ("id", entry.id),
        ("reason", entry.reason),
        ("parked by", f"{entry.parked_by} {entry.broker_reason}".strip()),
        ("origin queue", entry.origin_queue),
        ("saga", entry.saga_id or "-"),
        ("event type", entry.event_type or "-"),
        ("first failure", entry.first_failure_at or "-"),
        ("replays", str(entry.replays)),
    ]
    for label, value in fields:
        typer.echo(f"{label:<14} {value}")
    if entry.deaths:
        typer.echo("death history (newest first):")
        for death in entry.deaths:
            typer.echo(
                f"  {death.queue}: {death.reason} x{death.count}"
                f" (exchange {death.exchange or '(default)'}, {death.time or 'time unknown'})"
            )
    headers = _json_safe(entry.headers)
    if not show_personal_data:
        headers = redact_value(headers)
    typer.echo(f"headers ({len(headers)}):")
    for key in sorted(headers):
        typer.echo(f"  {key}: {_short(json.dumps(headers[key], ensure_ascii=False))}")
    note = "" if show_personal_data else "; personal data masked, --show-personal-data shows it"
    typer.echo(f"body ({len(entry.body)} bytes{note}):")
    typer.echo(redacted_body(entry.body, show_personal_data=show_personal_data))


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


@dlq_app.command("replay")
def replay(
    ids: Annotated[list[str] | None, typer.Argument(help="ids from `saga dlq list`")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every parked message")] = False,
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    reason: ReasonOption = None,
    saga: SagaOption = None,
    event_type: EventTypeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Send parked messages back to the work queue they failed in (never a delay queue).

    Name ids, or select with --reason/--saga/--event-type, or pass --all. A replayed
    message keeps its first failure's time, counts the replay (x-saga-replays) and gets a
    fresh retry budget.
    """
    filtered = bool(reason or saga or event_type)
    if not ids and not replay_all and not filtered:
        raise typer.BadParameter(
            "name message ids, select with --reason/--saga/--event-type, or pass --all"
        )
    if ids and replay_all:
        raise typer.BadParameter("name message ids or pass --all, not both")

    async def work(dead_letters: DeadLetters) -> tuple[list[ParkedMessage], ReplayFailed | None]:
        try:
            replayed = await dead_letters.replay(
                ids or None, reason=reason, saga_id=saga, event_type=event_type
            )
        except ReplayFailed as failure:
            return failure.replayed, failure
        return replayed, None

    replayed, failure = _run(url, service, spec, work)
    if as_json:
        document = {
            "replayed": [
                {"service": e.service, "id": e.id, "queue": e.origin_queue} for e in replayed
            ],
            "failed": [
                {"service": e.service, "id": e.id, "problem": str(problem)}
                for e, problem in (failure.failed if failure is not None else [])
            ],
        }
        typer.echo(json.dumps(document, indent=2))
        if failure is not None:
            raise typer.Exit(1)
        return
    for entry in replayed:
        typer.echo(f"replayed {entry.service} {entry.id} -> {entry.origin_queue}")
    typer.echo(f"replayed {len(replayed)} message(s)")
    if failure is not None:
        errors = Console(stderr=True)
        for entry, problem in failure.failed:
            what = escape(f"{entry.service} {entry.id}: {problem}")
            errors.print(f"[red]not replayed[/red] {what}")
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge(
    ids: Annotated[list[str] | None, typer.Argument(help="ids from `saga dlq list`")] = None,
    url: UrlOption = None,
    service: ServiceOption = None,
    spec: SpecOption = None,
    reason: ReasonOption = None,
    saga: SagaOption = None,
    event_type: EventTypeOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Delete parked messages for good (asks first): all, or those named or selected."""
    selected = bool(ids or reason or saga or event_type)
    if not yes:
        what = "the selected parked messages" if selected else "every parked message"
        typer.confirm(f"Delete {what} for good?", abort=True)
    count = _run(
        url,
        service,
        spec,
        lambda dead_letters: dead_letters.purge(
            ids or None, reason=reason, saga_id=saga, event_type=event_type
        ),
    )
    typer.echo(json.dumps({"purged": count}) if as_json else f"purged {count} message(s)")
