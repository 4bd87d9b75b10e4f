"""Retention settings: defaults, names, the step log's floor, and the safe minimum."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import typer
from inventory_service.settings import InventorySettings
from pydantic import ValidationError
from sagakit import ParticipantSettings
from sagakit.cli._store import parse_age, service_settings
from sagakit.store._retention import retention_notice
from sagakit.tracker import TrackerSettings

OWN_BROKER = "amqp://inventory:n0t-guest@broker.internal:5672/"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGAKIT_ENV", "RABBITMQ_URL", "RABBITMQ_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    for prefix in ("INVENTORY_", "TRACKER_", "PAYMENT_"):
        for field in ParticipantSettings.model_fields:
            monkeypatch.delenv(f"{prefix}{field.upper()}", raising=False)


def test_a_week_of_inbox_and_outbox_an_hourly_pass_and_the_step_log_kept() -> None:
    settings = ParticipantSettings()
    assert settings.retention == timedelta(days=7)
    assert settings.step_log_retention is None
    assert settings.prune_interval_seconds == 3600
    assert retention_notice(settings) is None


def test_each_service_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_RETENTION_DAYS", "14")
    monkeypatch.setenv("INVENTORY_STEP_LOG_RETENTION_DAYS", "90")
    monkeypatch.setenv("INVENTORY_PRUNE_INTERVAL_SECONDS", "600")
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "30")
    inventory = InventorySettings()
    assert inventory.retention == timedelta(days=14)
    assert inventory.step_log_retention == timedelta(days=90)
    assert inventory.prune_interval_seconds == 600
    assert TrackerSettings().retention == timedelta(days=30)
    # the CLI resolves a service's settings the way the service does
    assert service_settings("inventory").retention == timedelta(days=14)
    assert service_settings("tracker").retention == timedelta(days=30)
    # the default store is absolute: var/ under the directory it runs in, resolved
    expected = f"sqlite+aiosqlite:///{Path('var').resolve() / 'payment.db'}"
    assert service_settings("payment").database_url == expected
    assert expected.startswith("sqlite+aiosqlite:////")


def test_the_step_log_is_kept_at_least_as_long_as_the_inbox() -> None:
    with pytest.raises(ValidationError, match="keep the step log at least as long as the inbox"):
        ParticipantSettings(retention_days=7, step_log_retention_days=3)
    assert ParticipantSettings(retention_days=7, step_log_retention_days=7).step_log_retention


@pytest.mark.parametrize("days", [0, -1])
def test_a_retention_must_be_positive(days: float) -> None:
    with pytest.raises(ValidationError):
        ParticipantSettings(retention_days=days)


def test_below_a_day_is_refused_outside_local_development() -> None:
    with pytest.raises(ValidationError, match="must outlast any redelivery or replay window"):
        ParticipantSettings(rabbitmq_url=OWN_BROKER, environment="production", retention_days=0.5)
    assert ParticipantSettings(
        rabbitmq_url=OWN_BROKER, environment="production", retention_days=1
    ).retention == timedelta(days=1)


def test_below_a_day_is_a_warning_in_local_development() -> None:
    settings = ParticipantSettings(retention_days=0.001)
    notice = retention_notice(settings)
    assert notice is not None
    assert "below the safe minimum of 1" in notice


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("7", timedelta(days=7)),
        ("7d", timedelta(days=7)),
        ("1.5d", timedelta(hours=36)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        (" 30 s ", timedelta(seconds=30)),
        ("0", timedelta(0)),
    ],
)
def test_ages_read_days_hours_minutes_and_seconds(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "-1d", "7w", "d", "1h30m"])
def test_anything_else_is_not_an_age(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_age(text)
