"""The contract package holds the events and the spec only: no CLI, no console libraries."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import order_contracts


def test_contract_package_has_no_cli_modules() -> None:
    package = Path(order_contracts.__file__).parent
    modules = sorted(path.name for path in package.glob("*.py"))
    assert modules == ["__init__.py", "_money.py", "events.py", "samples.py", "spec.py"]


def test_importing_the_contracts_pulls_in_neither_rich_nor_typer() -> None:
    code = (
        "import sys, order_contracts, order_contracts.samples; "
        "print(sorted(m for m in ('rich', 'typer') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_order_commands_come_from_order_cli() -> None:
    (entry,) = [ep for ep in entry_points(group="sagakit.cli") if ep.name == "order"]
    assert entry.value == "order_cli:register"
