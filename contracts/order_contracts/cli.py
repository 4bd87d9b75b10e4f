"""The order flow's commands for the ``saga`` script (``order``, ``demo``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the order flow's commands to ``app``."""
