"""The ``saga`` console script.

Generic commands live here; a flow adds its own (``order``, ``demo``, …) through the
``sagakit.cli`` entry-point group: each entry point is a callable that receives the Typer app.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from ._spec_ref import load_spec

__all__ = ["app", "load_plugins", "load_spec", "main"]

app = typer.Typer(
    name="saga",
    help="Run, watch and check choreography-based sagas.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

_plugins_loaded = False


@app.callback()
def _saga() -> None:
    """Run, watch and check choreography-based sagas."""


def load_plugins() -> None:
    """Let every installed flow add its commands to ``app`` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from . import _check, _commands, _contracts, _dlq, _graph, _status, _steer, _store  # noqa: F401

    for entry_point in entry_points(group="sagakit.cli"):
        entry_point.load()(app)


def main() -> None:
    """Entry point of the ``saga`` script."""
    load_plugins()
    app()
