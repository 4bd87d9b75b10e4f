"""Paths are explicit: the default store is absolute and printed at start-up, commands that
read a store refuse a missing one, and the contracts are found from any folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inventory_service.settings import InventorySettings
from sagakit.cli import app as saga_cli
from sagakit.cli import load_plugins
from sagakit.observability._startup import where_line
from typer.testing import CliRunner

load_plugins()


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("TRACKER_DATABASE_URL", "SAGAKIT_DATA_DIR", "INVENTORY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [["list"], ["status", "0b8f8e0e"]])
def test_reading_the_tracker_from_another_folder_refuses_instead_of_creating(
    elsewhere: Path, command: list[str]
) -> None:
    result = CliRunner().invoke(saga_cli, command)
    assert result.exit_code == 2, result.output
    assert f"no tracker database at {elsewhere}/var/tracker.db" in result.output
    assert "TRACKER_DATABASE_URL" in result.output
    assert not (elsewhere / "var").exists()


def test_the_data_directory_setting_moves_the_default_store(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAKIT_DATA_DIR", str(elsewhere / "data"))
    assert InventorySettings().database_url == (
        f"sqlite+aiosqlite:///{elsewhere}/data/inventory.db"
    )


def test_the_start_up_line_names_broker_and_database_never_the_password(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVENTORY_RABBITMQ_URL", "amqp://shop:s3cret@rabbit.example:5673/shop")
    InventorySettings()
    line = where_line("inventory")
    assert line == (
        "inventory uses broker amqp://rabbit.example:5673 virtual host 'shop' as user 'shop'; "
        f"database SQLite file {elsewhere}/var/inventory.db"
    )


def test_contracts_export_check_works_from_any_folder(elsewhere: Path) -> None:
    result = CliRunner().invoke(saga_cli, ["contracts", "export", "--check"])
    assert result.exit_code == 0, result.output
    assert "contract files up to date" in result.output


def test_contracts_export_check_prints_json(elsewhere: Path) -> None:
    result = CliRunner().invoke(saga_cli, ["contracts", "export", "--check", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["out_of_date"] == []
    assert document["files"] >= 17
    assert Path(document["folder"]).name == "contracts"
