"""The ``saga`` console script.

Generic commands live here; a flow adds its own (``order``, ``demo``, …) through the
``sagakit.cli`` entry-point group: each entry point is a callable that receives the Typer app.

Exit codes, the same for every command: 0 done, 1 a negative answer (a saga cancelled, an
id not found, a check failed), 2 a usage or configuration error (a bad option, setting or
URL), 3 no broker answers, 4 the broker refuses the login or virtual host, 5 what the
command needs is in use (another consumer on the demo's queues, a port taken). Errors are
one or two lines; ``--debug`` (or ``LOG_LEVEL=DEBUG``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated

import typer

from sagakit import _exceptions as _errors

from ._spec_ref import load_spec

__all__ = [
    "EXIT_BROKER_REFUSED",
    "EXIT_BROKER_UNAVAILABLE",
    "EXIT_IN_USE",
    "EXIT_USAGE",
    "app",
    "debugging",
    "error_line",
    "load_plugins",
    "load_spec",
    "main",
]

EXIT_USAGE = 2
EXIT_BROKER_UNAVAILABLE = 3
EXIT_BROKER_REFUSED = 4
EXIT_IN_USE = 5

app = typer.Typer(
    name="saga",
    help="Run, watch and check choreography-based sagas.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

_plugins_loaded = False
_debug = False


def _version() -> str:
    try:
        return version("sagakit")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saga (sagakit) {_version()}")
        raise typer.Exit(0)


@app.callback()
def _saga(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error (or LOG_LEVEL=DEBUG).")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run, watch and check choreography-based sagas."""
    global _debug
    _debug = _debug or debug


def load_plugins() -> None:
    """Let every installed flow add its commands to ``app`` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from . import _check, _commands, _contracts, _dlq, _graph, _status, _steer, _store  # noqa: F401

    for entry_point in entry_points(group="sagakit.cli"):
        entry_point.load()(app)


def debugging() -> bool:
    """True when errors should show their traceback (``--debug`` or ``LOG_LEVEL=DEBUG``)."""
    return _debug or os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG"


def error_line(error: BaseException) -> tuple[str, int]:
    """The one or two lines an error prints, and the command's exit code for it."""
    text = str(error).strip() or type(error).__name__
    text = text[:1].upper() + text[1:]
    if isinstance(error, _errors.BrokerRefused):
        return text, EXIT_BROKER_REFUSED
    if isinstance(error, _errors.BrokerUnavailable):
        return (
            f"{text}. Start one with `rabbitmq-server -detached` (or `docker compose up -d "
            "rabbitmq`), or point --url / RABBITMQ_URL at one.",
            EXIT_BROKER_UNAVAILABLE,
        )
    # Everything else sagakit raises about what it was given (a spec, a URL, a setting).
    return text, EXIT_USAGE


def main() -> None:
    """Entry point of the ``saga`` script."""
    load_plugins()
    global _debug
    _debug = "--debug" in sys.argv[1:]
    try:
        app()
    except _errors.SagaError as error:
        if debugging():
            raise
        text, code = error_line(error)
        typer.echo(text, err=True)
        sys.exit(code)
