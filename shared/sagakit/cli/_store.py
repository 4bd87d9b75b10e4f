"""``saga store prune``: retention on demand, against a service's own database.

A service's database is found the way the service finds it: ``<NAME>_DATABASE_URL``,
``<NAME>_DATABASE_URL_FILE``, else ``var/<name>.db`` (``ParticipantSettings`` with the
service's prefix; the tracker's are ``TrackerSettings``), and so is its retention.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from sagakit.runtime._settings import MIN_SAFE_RETENTION_DAYS, ParticipantSettings
from sagakit.spec._spec import SagaSpec
from sagakit.store._retention import StoreSize, store_size, vacuum
from sagakit.store._store import Store, inbox, outbox, saga_steps
from sagakit.tracker._app import TrackerSettings
from sagakit.tracker._store import TrackerStore, tracked_events, tracked_sagas

from . import app
from ._spec_ref import SpecOption, load_spec

TRACKER = "tracker"
PARTICIPANT_TABLES = (inbox.name, outbox.name, saga_steps.name)
TRACKER_TABLES = (tracked_events.name, tracked_sagas.name)

store_app = typer.Typer(
    help="The services' own databases: inbox, outbox and step log.", no_args_is_help=True
)
app.add_typer(store_app, name="store")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*$")
_UNIT_SECONDS = {"": 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_age(text: str) -> timedelta:
    """``7`` or ``7d`` (days), ``12h``, ``90m``, ``30s``, or ``0`` (everything) as a timedelta."""
    match = _AGE.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age such as 7d, 12h, 90m, 30s or 0")
    amount, unit = match.groups()
    return timedelta(seconds=float(amount) * _UNIT_SECONDS[unit])


def service_settings(service: str) -> ParticipantSettings:
    """The settings ``service`` itself reads: its database URL and its retention.

    Every participant's settings class is a ParticipantSettings with the prefix
    ``<SERVICE>_``; what a subclass adds is the service's business configuration, which
    pruning does not need.
    """
    if service == TRACKER:
        return TrackerSettings()
    settings_class = type(
        f"{service.title()}StoreSettings",
        (ParticipantSettings,),
        {
            "__module__": __name__,
            "model_config": SettingsConfigDict(
                env_prefix=f"{service.upper()}_", extra="ignore", hide_input_in_errors=True
            ),
            "service_name": service,
        },
    )
    settings: ParticipantSettings = settings_class()
    return settings


@dataclass
class Pruned:
    """What ``saga store prune`` did to one service's store."""

    service: str
    database: str
    deleted: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    size_before: StoreSize | None = None
    size_after: StoreSize | None = None
    vacuumed: bool = False
    skipped: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict."""
        return {
            "service": self.service,
            "database": self.database,
            "deleted": self.deleted,
            "rows": self.rows,
            "size_before": self.size_before.as_dict() if self.size_before else None,
            "size_after": self.size_after.as_dict() if self.size_after else None,
            "vacuumed": self.vacuumed,
            "skipped": self.skipped,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    service: str
    url: str
    older_than: timedelta
    step_log_older_than: timedelta | None


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _has_table(store: Store, table: str) -> bool:
    async with store.engine.connect() as connection:
        return bool(await connection.run_sync(lambda sync: inspect(sync).has_table(table)))


async def _prune_one(plan: _Plan, *, spec: SagaSpec, do_vacuum: bool) -> Pruned:
    outcome = Pruned(plan.service, _shown(plan.url))
    is_tracker = plan.service == TRACKER
    tables = TRACKER_TABLES if is_tracker else PARTICIPANT_TABLES
    tracker = TrackerStore(plan.url, spec=spec) if is_tracker else None
    store = tracker.store if tracker is not None else Store(plan.url)
    try:
        if not await _has_table(store, tables[0]):
            outcome.error = f"{tables[0]} is not in this database: not the {plan.service} store?"
            return outcome
        outcome.size_before = await store_size(store, tables)
        if tracker is not None:
            outcome.deleted = await tracker.prune(older_than=plan.older_than)
            outcome.rows = await tracker.count_rows()
        else:
            outcome.deleted = await store.prune(
                older_than=plan.older_than, step_log_older_than=plan.step_log_older_than
            )
            outcome.rows = await store.count_rows()
        if do_vacuum:
            await vacuum(store, tables)
            outcome.vacuumed = True
        outcome.size_after = await store_size(store, tables)
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        await store.dispose()
    return outcome


def _plans(
    services: list[str],
    *,
    named: bool,
    database_url: str | None,
    older_than: timedelta | None,
    step_log_older_than: timedelta | None,
) -> tuple[list[_Plan], list[Pruned]]:
    plans: list[_Plan] = []
    settled: list[Pruned] = []
    for service in services:
        try:
            settings = service_settings(service)
        except (ValidationError, ValueError) as exc:
            settled.append(Pruned(service, "-", error=f"settings: {exc}"))
            continue
        retention = older_than if older_than is not None else settings.retention
        step_log = (
            step_log_older_than if step_log_older_than is not None else settings.step_log_retention
        )
        if service != TRACKER and step_log is not None and step_log < retention:
            settled.append(
                Pruned(
                    service,
                    "-",
                    error=f"the step log's age ({step_log}) is below the inbox's ({retention}): "
                    "keep the step log at least as long",
                )
            )
            continue
        url = database_url or settings.database_url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            # Connecting would create an empty database where the service's should be.
            missing = Pruned(service, _shown(url))
            if named:
                missing.error = f"no database at {parsed.database}"
            else:
                missing.skipped = f"no database at {parsed.database}"
            settled.append(missing)
            continue
        plans.append(
            _Plan(
                service=service,
                url=url,
                older_than=retention,
                step_log_older_than=None if service == TRACKER else step_log,
            )
        )
    return plans, settled


ServiceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        "-s",
        help="only this service (repeatable; default: every participant of the flow and the "
        "tracker)",
    ),
]


@store_app.command("prune")
def prune(
    service: ServiceOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="delete inbox records and sent outbox rows older than this: days (7), or "
            "12h, 90m, 30s; 0 deletes them all (default: the service's <NAME>_RETENTION_DAYS)",
        ),
    ] = None,
    step_log_older_than: Annotated[
        str | None,
        typer.Option(
            "--step-log-older-than",
            help="also delete step-log rows older than this (default: the service's "
            "<NAME>_STEP_LOG_RETENTION_DAYS, unset: the step log is kept)",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="the database of the one service named (default: what the service reads, "
            "<NAME>_DATABASE_URL[_FILE] or var/<name>.db)",
        ),
    ] = None,
    do_vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="then give the space back (SQLite: rewrite the file, holding its write lock "
            "meanwhile; PostgreSQL: VACUUM the tables)",
        ),
    ] = False,
    spec: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Delete inbox records and sent outbox rows past retention, now.

    Unsent outbox rows are never deleted, nor, unless asked, the step log; the tracker
    forgets ended sagas. Safe while the services run: rows go 500 per transaction.
    """
    flow = load_spec(spec)
    known = [*flow.participants(), TRACKER]
    for name in service or []:
        if name not in known:
            raise typer.BadParameter(
                f"unknown service {name!r} (known: {', '.join(known)})", param_hint="--service"
            )
    if database_url is not None and len(service or []) != 1:
        raise typer.BadParameter(
            "name the one service whose database this is", param_hint="--database-url"
        )
    age = parse_age(older_than) if older_than is not None else None
    step_log_age = parse_age(step_log_older_than) if step_log_older_than is not None else None
    if age is not None and age < timedelta(days=MIN_SAFE_RETENTION_DAYS):
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] deleting inbox records younger than "
            f"{MIN_SAFE_RETENTION_DAYS:g} day: a message that comes back after this (a "
            "replay from the dead-letter queue, a redelivery) is handled again"
        )
    plans, settled = _plans(
        service or known,
        named=bool(service),
        database_url=database_url,
        older_than=age,
        step_log_older_than=step_log_age,
    )

    async def run() -> list[Pruned]:
        return [await _prune_one(plan, spec=flow, do_vacuum=do_vacuum) for plan in plans]

    outcomes = settled + asyncio.run(run())
    outcomes.sort(key=lambda o: known.index(o.service))
    if as_json:
        typer.echo(json.dumps([o.as_dict() for o in outcomes], indent=2))
    else:
        _print(outcomes)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


def _megabytes(value: int | None) -> str:
    return f"{value / 1e6:.2f} MB" if value is not None else "-"


def _print(outcomes: list[Pruned]) -> None:
    console = Console()
    table = Table(title="rows deleted by retention")
    for column in ("service", "table", "deleted", "rows left"):
        table.add_column(column, justify="right" if column in {"deleted", "rows left"} else "left")
    for o in outcomes:
        for name, rows in o.rows.items():
            deleted = o.deleted.get(name)
            table.add_row(o.service, name, "kept" if deleted is None else str(deleted), str(rows))
    console.print(table)
    for o in outcomes:
        if o.error:
            console.print(f"[red]{o.service}: {o.error}[/red] ({o.database})")
        elif o.skipped:
            console.print(f"{o.service}: skipped, {o.skipped}")
        elif o.size_before is not None and o.size_after is not None:
            before, after = o.size_before, o.size_after
            line = f"{o.service}: file {_megabytes(before.file_bytes)}"
            line += f" -> {_megabytes(after.file_bytes)}"
            if after.used_bytes is not None:
                line += (
                    f", in use {_megabytes(before.used_bytes)} -> {_megabytes(after.used_bytes)}"
                )
            if not o.vacuumed and after.used_bytes is not None:
                line += " (new rows reuse the freed pages; --vacuum shrinks the file)"
            console.print(line)
