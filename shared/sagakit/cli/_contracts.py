"""``saga contracts``: the AsyncAPI documents and event schemas committed with a flow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from sagakit.spec._asyncapi import (
    DOCUMENTED_SERVER,
    TRACKER_DOCUMENT,
    asyncapi_document,
    incompatible_changes,
    payload_schema,
    render_json,
    schema_file_name,
    tracker_document,
)
from sagakit.spec._spec import SagaSpec
from sagakit.tracker._app import TrackerSettings, build_tracker

from . import app
from ._check import LoadedService, load_services
from ._spec_ref import SpecOption, load_spec, spec_home

contracts_app = typer.Typer(
    help="AsyncAPI documents and event schemas on file.", no_args_is_help=True
)
app.add_typer(contracts_app, name="contracts")

ASYNCAPI_FOLDER = "asyncapi"
SCHEMAS_FOLDER = "schemas"


@dataclass(frozen=True, slots=True)
class ContractFile:
    """One file ``saga contracts export`` keeps: where, and what it should hold.

    Attributes:
        path: Where the file lives.
        text: What it should hold now.
        problems: Why it must not be written (an incompatible change to a schema on file).
    """

    path: Path
    text: str
    problems: tuple[str, ...] = ()

    @property
    def is_current(self) -> bool:
        """True when the file on disk holds exactly ``text``."""
        return self.path.exists() and self.path.read_text(encoding="utf-8") == self.text


def service_version(module: str) -> str:
    """The version of the distribution that ships ``module`` (``0.0.0`` if none)."""
    try:
        return version(module.partition(".")[0])
    except PackageNotFoundError:
        return "0.0.0"


def asyncapi_files(services: list[LoadedService], folder: Path) -> list[ContractFile]:
    """Each service's AsyncAPI document, as it should be on file under ``folder``."""
    return [
        ContractFile(
            folder / ASYNCAPI_FOLDER / f"{loaded.participant}.json",
            render_json(asyncapi_document(loaded.service, version=service_version(loaded.module))),
        )
        for loaded in services
    ]


def tracker_file(spec: SagaSpec, folder: Path) -> ContractFile:
    """The saga tracker's AsyncAPI document, as it should be on file under ``folder``."""
    settings = TrackerSettings().model_copy(update={"rabbitmq_url": DOCUMENTED_SERVER})
    tracker = build_tracker(spec, settings, configure_logs=False)
    return ContractFile(
        folder / ASYNCAPI_FOLDER / f"{TRACKER_DOCUMENT}.json",
        render_json(tracker_document(tracker, version=service_version("sagakit"))),
    )


def schema_files(spec: SagaSpec, folder: Path) -> list[ContractFile]:
    """Each event's payload schema, as it should be on file under ``folder``.

    The file of a schema version is its baseline: once it exists, it may only change by
    new optional fields; anything else needs a new ``schema_version`` (a new file).
    """
    files = []
    for model in spec.events.values():
        path = folder / SCHEMAS_FOLDER / schema_file_name(model)
        current = payload_schema(model)
        problems: tuple[str, ...] = ()
        if path.exists():
            baseline = json.loads(path.read_text(encoding="utf-8"))
            problems = tuple(incompatible_changes(baseline, current))
        files.append(ContractFile(path, render_json(current), problems))
    return files


def default_folder(spec: str | None) -> Path:
    """Where the flow's contracts are: the project folder of its spec's package when it
    holds them (an editable install, the repository), else ``contracts`` here."""
    home = spec_home(spec)
    if home is not None and any((home / sub).is_dir() for sub in (ASYNCAPI_FOLDER, SCHEMAS_FOLDER)):
        return home
    return Path("contracts")


@contracts_app.command("export")
def export(
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="the contracts folder (asyncapi/ and schemas/ inside); default: the folder "
            "of the flow's contracts package, wherever the command runs",
            show_default=False,
        ),
    ] = None,
    spec: SpecOption = None,
    factory: Annotated[
        str | None,
        typer.Option(
            "--service-factory",
            help="where each participant's service is built (default: as saga check finds it)",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 if a file is out of date")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Write each service's AsyncAPI document (the tracker's too) and each event's schema.

    A schema already on file for an event's ``schema_version`` is only rewritten when the
    model merely adds optional fields; any other change is refused: bump the version.
    """
    flow = load_spec(spec)
    if folder is None:
        folder = default_folder(spec)
    files = [
        *asyncapi_files(
            load_services(flow, factory=factory, rabbitmq_url=DOCUMENTED_SERVER), folder
        ),
        tracker_file(flow, folder),
        *schema_files(flow, folder),
    ]
    refused = [f for f in files if f.problems]
    stale = [f for f in files if not f.problems and not f.is_current]
    if as_json:
        if not check:
            for item in stale:
                item.path.parent.mkdir(parents=True, exist_ok=True)
                item.path.write_text(item.text, encoding="utf-8")
        typer.echo(
            json.dumps(
                {
                    "folder": str(folder),
                    "files": len(files),
                    "out_of_date" if check else "written": [str(f.path) for f in stale],
                    "refused": {str(f.path): list(f.problems) for f in refused},
                },
                indent=2,
            )
        )
        if refused or (check and stale):
            raise typer.Exit(1)
        return
    for item in refused:
        typer.echo(f"refused {item.path}: changed without a new schema_version:", err=True)
        for problem in item.problems:
            typer.echo(f"  {problem}", err=True)
    for item in stale:
        if check:
            typer.echo(f"out of date: {item.path}")
        else:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            item.path.write_text(item.text, encoding="utf-8")
            typer.echo(f"wrote {item.path}")
    if not stale and not refused:
        typer.echo(f"{len(files)} contract files up to date")
    if refused or (check and stale):
        raise typer.Exit(1)
