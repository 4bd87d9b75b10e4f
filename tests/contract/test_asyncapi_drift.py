"""The committed contracts are what the code generates: each service's AsyncAPI document
(the tracker's too) and each event's schema. On a difference, run
``uv run saga contracts export``."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from order_contracts import ORDER_SAGA
from sagakit.cli import app
from sagakit.cli._check import load_services
from sagakit.cli._contracts import ContractFile, asyncapi_files, schema_files, tracker_file
from sagakit.spec._asyncapi import DOCUMENTED_SERVER
from typer.testing import CliRunner

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
FIX = "run `uv run saga contracts export` and commit the result"


@pytest.fixture(scope="module")
def documents() -> dict[str, ContractFile]:
    services = load_services(ORDER_SAGA, rabbitmq_url=DOCUMENTED_SERVER)
    files = [*asyncapi_files(services, CONTRACTS), tracker_file(ORDER_SAGA, CONTRACTS)]
    return {file.path.stem: file for file in files}


def _drift(file: ContractFile) -> str:
    if not file.path.exists():
        return f"{file.path} is missing: {FIX}"
    diff = difflib.unified_diff(
        file.path.read_text(encoding="utf-8").splitlines(keepends=True),
        file.text.splitlines(keepends=True),
        fromfile=f"{file.path} (committed)",
        tofile="generated",
        n=2,
    )
    return "".join(list(diff)[:80]) + f"\n{FIX}"


@pytest.mark.parametrize("service", [*ORDER_SAGA.participants(), "tracker"])
def test_the_committed_asyncapi_document_is_the_generated_one(
    documents: dict[str, ContractFile], service: str
) -> None:
    file = documents[service]
    assert file.is_current, _drift(file)


@pytest.mark.parametrize("event_type", list(ORDER_SAGA.events))
def test_each_events_schema_is_on_file(event_type: str) -> None:
    (file,) = [
        f for f in schema_files(ORDER_SAGA, CONTRACTS) if f.path.name.startswith(f"{event_type}.v")
    ]
    assert file.is_current, _drift(file)


def test_the_documents_do_not_depend_on_where_the_broker_is(
    monkeypatch: pytest.MonkeyPatch, documents: dict[str, ContractFile]
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqp://someone:secret@rabbitmq.internal:5671/staging")
    monkeypatch.setenv("PAYMENT_RABBITMQ_URL", "amqp://payments@elsewhere/payments")
    services = load_services(ORDER_SAGA, rabbitmq_url=DOCUMENTED_SERVER)

    files = [*asyncapi_files(services, CONTRACTS), tracker_file(ORDER_SAGA, CONTRACTS)]
    again = {file.path.stem: file.text for file in files}

    assert again == {name: file.text for name, file in documents.items()}
    assert "secret" not in "".join(again.values())


def test_each_document_lists_what_its_service_consumes_and_emits(
    documents: dict[str, ContractFile],
) -> None:
    inventory = documents["inventory"].text
    for event in ("order.created", "payment.failed", "payment.refunded"):
        assert f'"address": "{event}"' in inventory
    for event in (
        "inventory.reserved",
        "inventory.reservation_failed",
        "inventory.released",
        "order.cancelled",
    ):
        assert f'"inventory.emits.{event}"' in inventory


def test_export_writes_the_contracts_and_refuses_an_incompatible_change(tmp_path: Path) -> None:
    runner = CliRunner()
    export = ["contracts", "export", "--spec", "order_contracts:ORDER_SAGA", "--dir", str(tmp_path)]

    written = runner.invoke(app, export)
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in (tmp_path / "asyncapi").iterdir()) == [
        "inventory.json",
        "notification.json",
        "payment.json",
        "shipping.json",
        "tracker.json",
    ]
    assert len(list((tmp_path / "schemas").iterdir())) == len(ORDER_SAGA.events)
    assert runner.invoke(app, [*export, "--check"]).exit_code == 0

    # A baseline from before payment.processed carried a required field it carries now.
    baseline = tmp_path / "schemas" / "payment.processed.v1.json"
    older = json.loads(baseline.read_text(encoding="utf-8"))
    del older["properties"]["payment_id"]
    older["required"].remove("payment_id")
    baseline.write_text(json.dumps(older), encoding="utf-8")

    refused = runner.invoke(app, export)
    assert refused.exit_code == 1
    assert "refused" in refused.output
    assert "$.payment_id: became required" in refused.output
    assert json.loads(baseline.read_text(encoding="utf-8")) == older
