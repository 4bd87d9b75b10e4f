"""The order flow's commands for the ``saga`` script (``order``, ``demo``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from ._demo import demo_command
from ._order import order_command


def register(app: typer.Typer) -> None:
    """Add the order flow's commands to ``app``."""
    app.command("order", help=_reflowed(order_command))(order_command)
    app.command("demo", help=_reflowed(demo_command))(demo_command)


def _reflowed(command: Callable[..., Any]) -> str:
    # Rich help keeps a docstring's line breaks; join each paragraph into one line instead.
    paragraphs = (inspect.getdoc(command) or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
