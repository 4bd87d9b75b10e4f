"""What the generic saga commands print: JSON everywhere, 80-column tables, id prefixes, exit
codes that tell a malformed id from an unknown one, one word per saga state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from order_contracts import ORDER_SAGA
from order_contracts.samples import sample_order
from sagakit import Envelope
from sagakit.cli import app as saga_cli
from sagakit.cli import load_plugins
from sagakit.tracker import decode_event, tracker_store
from typer.testing import CliRunner

from tests.contract.test_tracker import TRACEPARENT, Saga

load_plugins()


def _seed(url: str, *envelopes: Envelope[Any]) -> None:
    async def seed() -> None:
        async with tracker_store(url, spec=ORDER_SAGA) as store:
            for envelope in envelopes:
                await store.record(decode_event(envelope.encode(), {"traceparent": TRACEPARENT}))

    asyncio.run(seed())


@pytest.fixture
def tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Saga, Saga]:
    url = f"sqlite+aiosqlite:///{tmp_path}/tracker.db"
    done, declined = Saga(sample_order()), Saga(sample_order())
    _seed(url, *done.fulfilled(), *declined.declined())
    monkeypatch.setenv("TRACKER_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "80")
    return done, declined


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_list_fits_80_columns_with_short_ids(tracker: tuple[Saga, Saga]) -> None:
    done, _ = tracker
    result = CliRunner().invoke(saga_cli, ["list"])
    assert result.exit_code == 0, result.output
    assert _widest(result.output) <= 80
    assert done.saga_id[:8] in result.output
    assert done.saga_id not in result.output
    assert "fulfilled" in result.output
    assert "cancelled" in result.output

    wide = CliRunner().invoke(saga_cli, ["list", "--wide"], env={"COLUMNS": "200"})
    assert done.saga_id in wide.output
    assert "trace id" in wide.output


def test_list_filters_by_the_one_word_of_each_end(tracker: tuple[Saga, Saga]) -> None:
    done, declined = tracker
    listed = json.loads(
        CliRunner().invoke(saga_cli, ["list", "--state", "cancelled", "--json"]).output
    )
    assert [row["saga_id"] for row in listed] == [declined.saga_id]
    assert listed[0]["state"] == "cancelled"
    fulfilled = CliRunner().invoke(saga_cli, ["list", "--state", "fulfilled", "--json"])
    assert [row["saga_id"] for row in json.loads(fulfilled.output)] == [done.saga_id]


def test_status_takes_the_8_characters_the_demo_prints(tracker: tuple[Saga, Saga]) -> None:
    done, _ = tracker
    result = CliRunner().invoke(saga_cli, ["status", done.saga_id[:8], "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["saga_id"] == done.saga_id
    assert shown["state"] == "fulfilled"
    assert shown["last_event_type"] == "order.fulfilled"


def test_status_after_a_repeated_start_event_shows_the_terminal_event(
    tmp_path: Path, tracker: tuple[Saga, Saga], monkeypatch: pytest.MonkeyPatch
) -> None:
    done, _ = tracker
    again = Envelope.new(done.order, context=done.created.context, producer="client")
    _seed(f"sqlite+aiosqlite:///{tmp_path}/tracker.db", again)
    shown = json.loads(CliRunner().invoke(saga_cli, ["status", done.saga_id, "--json"]).output)
    assert shown["event_count"] == 6
    assert shown["state"] == "fulfilled"
    assert shown["last_event_type"] == "order.fulfilled"


@pytest.mark.parametrize("given", ["not-a-uuid", "0b8", "zz8f8e0e"])
def test_status_of_a_malformed_id_is_a_usage_error(tracker: tuple[Saga, Saga], given: str) -> None:
    result = CliRunner().invoke(saga_cli, ["status", given])
    assert result.exit_code == 2
    assert "is not a saga id" in result.output


def test_status_of_an_unknown_id_is_not_found(tracker: tuple[Saga, Saga]) -> None:
    result = CliRunner().invoke(saga_cli, ["status", "00000000-0000-0000-0000-000000000000"])
    assert result.exit_code == 1
    assert CliRunner().invoke(saga_cli, ["status", "ffffffff"]).exit_code == 1


def test_status_fits_80_columns(tracker: tuple[Saga, Saga]) -> None:
    _, declined = tracker
    result = CliRunner().invoke(saga_cli, ["status", declined.saga_id[:8]])
    assert result.exit_code == 0, result.output
    assert _widest(result.output) <= 80, result.output
    assert "cancelled" in result.output


def test_spec_fits_80_columns_and_cuts_no_event_name() -> None:
    result = CliRunner().invoke(saga_cli, ["spec"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert _widest(result.output) <= 80
    assert "…" not in result.output
    for step in ORDER_SAGA.steps:
        for event in (step.trigger, step.success, step.failure):
            assert event in result.output
    as_json = json.loads(CliRunner().invoke(saga_cli, ["spec", "--json"]).output)
    assert [s["step"] for s in as_json["steps"]] == [s.name for s in ORDER_SAGA.steps]


def test_check_prints_json() -> None:
    result = CliRunner().invoke(saga_cli, ["check", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "saga_type": "order_fulfilment",
        "checked": "the spec",
        "ok": True,
        "gaps": [],
    }


def test_version() -> None:
    result = CliRunner().invoke(saga_cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("saga (sagakit) ")
