"""``saga store prune`` against a service's database, found as the service finds it."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from order_contracts import ORDER_SAGA
from sagakit import utc_now
from sagakit.cli import app as saga_cli
from sagakit.cli import load_plugins
from sagakit.store import OutboxRow, StepStatus, Store
from sagakit.tracker import TrackedEvent, TrackerStore
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

BODY = '{"payload": "' + "x" * 1500 + '"}'
PRUNE_ALL = ("store", "prune", "--older-than", "0", "--step-log-older-than", "0")


def _seed(url: str, *, handled: int, unsent: int = 0) -> None:
    """A participant's store after ``handled`` messages (plus ``unsent`` not yet published)."""

    async def seed() -> None:
        store = Store(url)
        await store.create_schema()
        try:
            for n in range(handled + unsent):
                saga = uuid.uuid4()
                event_id = str(uuid.uuid4())
                async with store.write() as transaction:
                    await store.remember(
                        transaction,
                        consumer="q",
                        message_id=str(uuid.uuid4()),
                        saga_id=saga,
                        step="s",
                    )
                    row = OutboxRow(event_id, str(saga), "x.happened", BODY, {}, {})
                    await store.finish(
                        transaction,
                        saga_id=saga,
                        step="s",
                        status=StepStatus.COMPLETED,
                        rows=[row],
                    )
                if n < handled:
                    await store.mark_sent([event_id])
        finally:
            await store.dispose()

    asyncio.run(seed())


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    # Services whose database is not named are looked for in var/ under the working directory.
    monkeypatch.chdir(tmp_path)
    for name in (*ORDER_SAGA.participants(), "tracker"):
        for suffix in ("DATABASE_URL", "DATABASE_URL_FILE", "RETENTION_DAYS", "ENVIRONMENT"):
            monkeypatch.delenv(f"{name.upper()}_{suffix}", raising=False)
        monkeypatch.delenv(f"{name.upper()}_STEP_LOG_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("SAGAKIT_ENV", raising=False)
    monkeypatch.setenv("SAGA_SPEC", "order_contracts:ORDER_SAGA")
    monkeypatch.setenv("COLUMNS", "200")
    load_plugins()
    return CliRunner()


def _json(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    document: list[dict[str, Any]] = json.loads(result.stdout)
    return document


def test_prune_finds_the_service_database_through_its_settings(
    cli: CliRunner, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(store_url, handled=30, unsent=2)
    monkeypatch.setenv("INVENTORY_DATABASE_URL", store_url)

    # the service's own retention (7 days) deletes nothing yet
    [kept] = _json(cli.invoke(saga_cli, ["store", "prune", "-s", "inventory", "--json"]))
    assert kept["deleted"] == {"sagakit_inbox": 0, "sagakit_outbox": 0}

    result = cli.invoke(
        saga_cli, ["store", "prune", "-s", "inventory", "--older-than", "0", "--json"]
    )
    [pruned] = _json(result)
    assert pruned["service"] == "inventory"
    assert pruned["deleted"] == {"sagakit_inbox": 32, "sagakit_outbox": 30}
    # the unsent rows stay, and so does the step log
    assert pruned["rows"] == {"sagakit_inbox": 0, "sagakit_outbox": 2, "sagakit_saga_steps": 32}
    assert pruned["error"] is None
    if store_url.startswith("sqlite"):
        before, after = pruned["size_before"], pruned["size_after"]
        assert after["used_bytes"] < before["used_bytes"]
        assert after["file_bytes"] == before["file_bytes"]  # free pages stay in the file
    assert "younger than 1 day" in result.stderr


def test_the_service_retention_settings_apply_unless_overridden(
    cli: CliRunner, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(store_url, handled=5)
    monkeypatch.setenv("PAYMENT_DATABASE_URL", store_url)
    # a retention of a few microseconds, as the service would read it (development only)
    monkeypatch.setenv("PAYMENT_RETENTION_DAYS", "0.00000001")
    monkeypatch.setenv("PAYMENT_STEP_LOG_RETENTION_DAYS", "0.00000001")

    [pruned] = _json(cli.invoke(saga_cli, ["store", "prune", "-s", "payment", "--json"]))

    assert pruned["deleted"] == {
        "sagakit_inbox": 5,
        "sagakit_outbox": 5,
        "sagakit_saga_steps": 5,
    }


def test_a_database_url_names_the_one_service_it_belongs_to(cli: CliRunner, store_url: str) -> None:
    _seed(store_url, handled=4)
    args = ["store", "prune", "--database-url", store_url, "--older-than", "0s"]

    both = cli.invoke(saga_cli, [*args, "-s", "payment", "-s", "shipping"])
    assert both.exit_code == 2
    assert "name the one service" in both.output

    [pruned] = _json(cli.invoke(saga_cli, [*args, "-s", "shipping", "--json"]))
    assert pruned["deleted"]["sagakit_inbox"] == 4


def test_the_step_log_goes_only_when_asked_and_never_before_the_inbox(
    cli: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/inventory.db"
    _seed(url, handled=3)
    args = ["store", "prune", "-s", "inventory", "--database-url", url]

    shorter = cli.invoke(saga_cli, [*args, "--older-than", "7d", "--step-log-older-than", "1d"])
    assert shorter.exit_code == 1
    assert "keep the step log at least as long" in shorter.output

    table = cli.invoke(saga_cli, [*args, "--older-than", "0"])
    assert table.exit_code == 0, table.output
    assert "kept" in table.output  # the step log's line
    assert "--vacuum shrinks the file" in table.output

    [pruned] = _json(
        cli.invoke(saga_cli, [*args, "--older-than", "0", "--step-log-older-than", "0", "--json"])
    )
    assert pruned["deleted"]["sagakit_saga_steps"] == 3


def test_vacuum_gives_the_space_back(cli: CliRunner, store_url: str) -> None:
    _seed(store_url, handled=400)
    [pruned] = _json(
        cli.invoke(
            saga_cli,
            [*PRUNE_ALL, "-s", "notification", "--database-url", store_url, "--vacuum", "--json"],
        )
    )
    assert pruned["vacuumed"]
    assert pruned["rows"] == {"sagakit_inbox": 0, "sagakit_outbox": 0, "sagakit_saga_steps": 0}
    assert pruned["size_after"]["file_bytes"] < pruned["size_before"]["file_bytes"]


def test_missing_and_unknown_services(cli: CliRunner, tmp_path: Path) -> None:
    unknown = cli.invoke(saga_cli, ["store", "prune", "-s", "warehouse"])
    assert unknown.exit_code == 2
    assert "unknown service 'warehouse'" in unknown.output

    named = cli.invoke(saga_cli, ["store", "prune", "-s", "inventory"])
    assert named.exit_code == 1
    assert f"no database at {tmp_path}/var/inventory.db" in named.output
    assert not (tmp_path / "var" / "inventory.db").exists()  # and none was created

    # by default every service is tried, and those without a database are skipped
    _seed(f"sqlite+aiosqlite:///{tmp_path}/var/inventory.db", handled=2)
    everything = _json(cli.invoke(saga_cli, ["store", "prune", "--older-than", "0", "--json"]))
    assert [o["service"] for o in everything] == [*ORDER_SAGA.participants(), "tracker"]
    by_service = {o["service"]: o for o in everything}
    assert by_service["inventory"]["deleted"]["sagakit_inbox"] == 2
    assert by_service["payment"]["skipped"] == f"no database at {tmp_path}/var/payment.db"

    inventory_url = f"sqlite+aiosqlite:///{tmp_path}/var/inventory.db"
    wrong = cli.invoke(
        saga_cli, ["store", "prune", "-s", "tracker", "--database-url", inventory_url]
    )
    assert wrong.exit_code == 1
    assert "saga_tracker_events is not in this database" in wrong.output


def test_the_tracker_forgets_ended_sagas(
    cli: CliRunner, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed() -> None:
        tracker = TrackerStore(store_url, spec=ORDER_SAGA)
        await tracker.create_schema()
        try:
            for ended in (True, False):
                saga_id = str(uuid.uuid4())
                script = ["order.created", "inventory.reservation_failed", "order.cancelled"]
                for n, event_type in enumerate(script if ended else script[:1]):
                    await tracker.record(
                        TrackedEvent(
                            event_id=str(uuid.uuid4()),
                            event_type=event_type,
                            producer="test",
                            occurred_at=utc_now() - timedelta(days=30, seconds=-n),
                            saga_id=saga_id,
                            saga_type=ORDER_SAGA.saga_type,
                            failed_step="reserve_stock" if n == 2 else None,
                            reason="insufficient_stock" if n else None,
                        )
                    )
        finally:
            await tracker.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("TRACKER_DATABASE_URL", store_url)

    [pruned] = _json(cli.invoke(saga_cli, ["store", "prune", "-s", "tracker", "--json"]))

    assert pruned["deleted"] == {"saga_tracker_events": 3, "saga_tracker_sagas": 1}
    assert pruned["rows"] == {"saga_tracker_events": 1, "saga_tracker_sagas": 1}
