"""``saga status``, ``saga list`` and ``saga tracker rebuild``: the tracker's read model.

They read the tracker's database (``TRACKER_DATABASE_URL``, else SQLite ``tracker.db`` in the
data directory: ``$SAGAKIT_DATA_DIR``, else ``./var``) and never touch the broker; a SQLite
file that does not exist is refused, not created.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from sagakit._context import utc_now
from sagakit.runtime._settings import DATA_DIR_ENV, default_database_url
from sagakit.spec._spec import SagaSpec
from sagakit.tracker._model import SagaState, SagaView, view_as_dict
from sagakit.tracker._store import SagaRow, TrackerStore, tracker_store

from . import app
from ._spec_ref import SpecOption, load_spec

DATABASE_ENV = "TRACKER_DATABASE_URL"
STUCK_AFTER_ENV = "TRACKER_STUCK_AFTER_SECONDS"
TRACE_URL_ENV = "SAGA_TRACE_URL"
DEFAULT_STUCK_AFTER_SECONDS = 60.0

tracker_app = typer.Typer(help="The saga tracker's database.", no_args_is_help=True)
app.add_typer(tracker_app, name="tracker")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help=f"tracker database URL (default: ${DATABASE_ENV}, else tracker.db in "
        f"${DATA_DIR_ENV} or ./var)",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]
StuckAfterOption = Annotated[
    float | None,
    typer.Option(
        "--stuck-after",
        help=f"seconds without an event that make a saga stuck (default: ${STUCK_AFTER_ENV} or 60)",
    ),
]


def _database(url: str | None, *, must_exist: bool = True) -> str:
    """The tracker's database URL; a SQLite file that does not exist is refused (exit 2)
    rather than created empty, which would answer every question with "nothing"."""
    chosen = url or os.environ.get(DATABASE_ENV) or default_database_url("tracker")
    parsed = make_url(chosen)
    if must_exist and parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "").resolve()
        if not path.is_file():
            given = "--db" if url else DATABASE_ENV if os.environ.get(DATABASE_ENV) else None
            hint = (
                f"check {given}"
                if given
                else f"the tracker keeps it in its data directory (${DATA_DIR_ENV}, else ./var "
                f"where it runs): run this there, set {DATABASE_ENV} or pass --db"
            )
            typer.echo(f"no tracker database at {path}: {hint}", err=True)
            raise typer.Exit(2)
    return chosen


def _stuck_after(seconds: float | None) -> timedelta:
    if seconds is None:
        seconds = float(os.environ.get(STUCK_AFTER_ENV) or DEFAULT_STUCK_AFTER_SECONDS)
    return timedelta(seconds=seconds)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds") if value is not None else "-"


def _clock(value: datetime | None) -> str:
    # Inside one saga the date is in the header; the tables show the time of day (UTC).
    return value.strftime("%H:%M:%S.%f")[:-3] if value is not None else "-"


_ID_TEXT = re.compile(r"^[0-9a-f-]{1,36}$")
MIN_PREFIX = 4


def _id_or_prefix(text: str) -> str:
    """A saga id as given: a whole UUID (normalised) or the start of one; exit 2 otherwise."""
    given = text.strip().lower()
    if len(given) == 36:
        try:
            return str(uuid.UUID(given))
        except ValueError:
            pass
    elif _ID_TEXT.match(given) and len(given.replace("-", "")) >= MIN_PREFIX:
        return given
    typer.echo(
        f"{text!r} is not a saga id: give a UUID, or its first {MIN_PREFIX} or more "
        "characters (as saga demo and saga list print them)",
        err=True,
    )
    raise typer.Exit(2)


async def _resolve(store: TrackerStore, given: str) -> str | None:
    if len(given) == 36:
        return given
    found = await store.saga_ids_starting(given, limit=6)
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
        typer.echo(f"{given!r} is the start of several saga ids ({shown}): give more", err=True)
        raise typer.Exit(2)
    return found[0] if found else None


@app.command("status")
def status(
    saga_id: Annotated[
        str, typer.Argument(help="the saga id (context.saga_id), or its first characters")
    ],
    db: DbOption = None,
    spec: SpecOption = None,
    stuck_after: StuckAfterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one saga: its state, its steps, its timeline and its trace id.

    Exit code 0 when found, 1 when the tracker does not know it, 2 for a malformed id (or
    a prefix that several sagas share).
    """
    given = _id_or_prefix(saga_id)
    flow = load_spec(spec)

    async def read() -> tuple[SagaView | None, list[tuple[datetime, str, str, str]]]:
        async with tracker_store(_database(db), spec=flow) as store:
            found = await _resolve(store, given)
            if found is None:
                return None, []
            events = await store.events(found)
            view = await store.view(found)
        timeline = [(e.occurred_at, e.event_type, e.producer, e.reason or "") for e in events]
        return view, timeline

    view, timeline = asyncio.run(read())
    if view is None:
        Console(stderr=True).print(f"saga {saga_id} is not known to the tracker")
        raise typer.Exit(1)
    threshold = _stuck_after(stuck_after)
    stuck = view.stuck_reason(now=utc_now(), stuck_after=threshold)
    if as_json:
        document = view_as_dict(view)
        document["stuck"] = stuck
        document["timeline"] = [
            {"at": at.isoformat(), "event_type": t, "producer": p, "reason": r or None}
            for at, t, p, r in timeline
        ]
        typer.echo(json.dumps(document, indent=2))
        return
    _print_status(flow, view, timeline, stuck)


def _print_status(
    flow: SagaSpec,
    view: SagaView,
    timeline: list[tuple[datetime, str, str, str]],
    stuck: str | None,
) -> None:
    console = Console()
    console.print(f"[bold]saga {view.saga_id}[/bold] ({view.saga_type}): [bold]{view.state}[/bold]")
    if stuck:
        console.print(f"[red]stuck: {stuck}[/red]")
    console.print(f"started     {_when(view.started_at)}")
    console.print(
        f"last event  {view.last_event_type} at {_when(view.last_event_at)}"
        f" ({view.event_count} events)"
    )
    if view.deadline is not None:
        console.print(f"deadline    {_when(view.deadline)}")
    if view.failed_step:
        console.print(f"failed step {view.failed_step}: {view.failure_reason or '-'}")
    console.print(f"trace id    {view.trace_id or '- (not traced)'}")
    trace_url = os.environ.get(TRACE_URL_ENV)
    if view.trace_id and trace_url:
        console.print(f"trace       {trace_url.format(trace_id=view.trace_id)}")
    steps = Table(title="steps")
    for column in ("#", "step", "participant", "outcome", "done", "failed", "undone"):
        steps.add_column(column)
    for number, step in enumerate(view.steps, start=1):
        steps.add_row(
            str(number),
            step.step,
            step.participant,
            step.outcome or "-",
            _clock(step.completed_at),
            _clock(step.failed_at),
            _clock(step.compensated_at),
        )
    console.print(steps)
    events = Table(title="timeline")
    for column in ("at (UTC)", "+ms", "event", "producer", "reason"):
        events.add_column(column)
    for at, event_type, producer, reason in timeline:
        offset = int((at - view.started_at).total_seconds() * 1000)
        events.add_row(_clock(at), str(offset), event_type, producer, reason or "")
    console.print(events)


@app.command("list")
def list_sagas(
    stuck: Annotated[bool, typer.Option("--stuck", help="only stuck sagas")] = False,
    state: Annotated[
        SagaState | None, typer.Option("--state", help="only sagas in this state")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 50,
    wide: Annotated[
        bool, typer.Option("--wide", help="whole saga ids and times, and the trace ids")
    ] = False,
    db: DbOption = None,
    spec: SpecOption = None,
    stuck_after: StuckAfterOption = None,
    as_json: JsonOption = False,
) -> None:
    """List sagas the tracker knows, most recently moved first."""
    flow = load_spec(spec)
    threshold = _stuck_after(stuck_after)
    now = utc_now()

    async def read() -> list[SagaRow]:
        async with tracker_store(_database(db), spec=flow) as store:
            return await store.sagas(
                state=state, stuck_after=threshold if stuck else None, now=now, limit=limit
            )

    rows = asyncio.run(read())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "saga_id": r.saga_id,
                        "state": r.state.value,
                        "stuck": r.stuck_reason(now=now, stuck_after=threshold),
                        "last_event_type": r.last_event_type,
                        "last_event_at": r.last_event_at.isoformat(),
                        "started_at": r.started_at.isoformat(),
                        "events": r.event_count,
                        "failed_step": r.failed_step,
                        "failure_reason": r.failure_reason,
                        "trace_id": r.trace_id,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"{len(rows)} saga(s)")
    # 8 characters of an id are what the demo prints and what saga status takes.
    columns = ["saga", "state", "last event", "at (UTC)", "failed step", "stuck"]
    if wide:
        columns.append("trace id")
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in rows:
        cells = [
            r.saga_id if wide else r.saga_id[:8],
            r.state.value,
            r.last_event_type,
            r.last_event_at.isoformat(timespec="seconds")
            if wide
            else r.last_event_at.strftime("%H:%M:%S"),
            f"{r.failed_step}: {r.failure_reason}" if r.failed_step else "",
            r.stuck_reason(now=now, stuck_after=threshold) or "",
        ]
        if wide:
            cells.append(r.trace_id or "")
        table.add_row(*cells)
    Console().print(table)


@tracker_app.command("rebuild")
def rebuild(
    sources: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            help="a participant's database URL (repeatable; default: each participant's "
            "<NAME>_DATABASE_URL or var/<name>.db)",
        ),
    ] = None,
    db: DbOption = None,
    spec: SpecOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild the tracker's database from the participants' outboxes.

    Safe to run at any time, also while the tracker runs: events already recorded are
    skipped by their id.
    """
    flow = load_spec(spec)
    urls = sources or [
        os.environ.get(f"{name.upper()}_DATABASE_URL") or default_database_url(name)
        for name in flow.participants()
    ]

    async def run() -> list[tuple[str, str, str]]:
        done = []
        async with tracker_store(_database(db, must_exist=False), spec=flow) as store:
            for url in urls:
                try:
                    read, new = await store.rebuild_from_outbox(url)
                except Exception as exc:
                    done.append((url, "-", f"failed: {type(exc).__name__}: {exc}"))
                    continue
                done.append((url, str(read), str(new)))
        return done

    results = asyncio.run(run())
    failed = any(new.startswith("failed") for _, _, new in results)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "source": make_url(url).render_as_string(hide_password=True),
                        "events_read": int(read) if read.isdigit() else None,
                        "new": int(new) if new.isdigit() else None,
                        "error": None if new.isdigit() else new,
                    }
                    for url, read, new in results
                ],
                indent=2,
            )
        )
        if failed:
            raise typer.Exit(1)
        return
    table = Table(title="tracker rebuilt from outboxes")
    for column in ("source", "events read", "new to the tracker"):
        table.add_column(column, overflow="fold")
    for url, read, new in results:
        table.add_row(make_url(url).render_as_string(hide_password=True), read, new)
    Console().print(table)
    if any(new.startswith("failed") for _, _, new in results):
        raise typer.Exit(1)
