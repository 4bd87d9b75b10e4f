"""The order flow's CLI: option parsing, building the order, reading how a saga ended."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from order_cli._common import SagaEnd, describe, parse_duration, parse_item
from order_cli._demo import DemoReport, DemoSaga, demo_services, scenarios_for
from order_cli._order import build_order
from order_contracts import (
    ORDER_SAGA,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderFulfilled,
)
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit import Envelope, SagaContext, StepOutcome, StepRecord, utc_now
from sagakit.broker import redacted
from sagakit.cli import app, load_plugins
from sagakit.testing import consumed_queues
from typer.testing import CliRunner


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("45", 45), ("1.5m", 90), (" 10 s ", 10)],
)
def test_durations_read_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "-3s", "0s", "s", "1d", "3 m s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


def test_an_item_is_sku_quantity_and_price() -> None:
    line = parse_item("SKU-PEAR:3:2.5")
    assert (line.sku, line.quantity, line.unit_price) == ("SKU-PEAR", 3, Decimal("2.50"))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("SKU-APPLE", "SKU:QTY:PRICE"),
        ("SKU-APPLE:2", "SKU:QTY:PRICE"),
        ("SKU-APPLE:2:1.50:9", "SKU:QTY:PRICE"),
        (":2:1.50", "SKU:QTY:PRICE"),
        ("SKU-APPLE:0:1.50", "quantity"),
        ("SKU-APPLE:two:1.50", "quantity"),
        ("SKU-APPLE:2:1.999", "unit_price"),
        ("SKU-APPLE:2:-1", "unit_price"),
    ],
)
def test_a_malformed_item_says_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(typer.BadParameter, match=complaint):
        parse_item(text)


def test_the_default_order_is_the_fulfilled_sample_with_a_new_id() -> None:
    first, second = build_order(), build_order()
    expected = sample_order(Scenario.FULFILLED)
    assert first.model_dump(exclude={"order_id"}) == expected.model_dump(exclude={"order_id"})
    assert first.items[0].sku == "SKU-APPLE"
    assert first.order_id != second.order_id


def test_options_override_the_scenario() -> None:
    order = build_order(
        scenario=Scenario.CARD_DECLINED,
        items=["SKU-PLUM:4:0.99", "SKU-PEAR:1:10"],
        country="FR",
        email="bob@example.org",
        order_id="ord-1",
    )
    assert order.payment_method == "tok_declined"
    assert [(i.sku, i.quantity) for i in order.items] == [("SKU-PLUM", 4), ("SKU-PEAR", 1)]
    assert order.total() == Decimal("13.96")
    assert order.shipping_address.country == "FR"
    assert order.customer.email == "bob@example.org"
    assert order.order_id == "ord-1"


def test_an_order_file_is_the_order_created_payload(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(sample_order(Scenario.NOT_SERVED, order_id="ord-file").model_dump_json())
    order = build_order(file=path, payment_token="tok_declined")
    assert order.order_id == "ord-file"
    assert order.shipping_address.country == "AQ"
    assert order.payment_method == "tok_declined"


@pytest.mark.parametrize(
    ("content", "complaint"),
    [("[1, 2]", "JSON object"), ("{not json", "cannot read"), ('{"order_id": "x"}', "customer")],
)
def test_a_bad_order_file_is_refused(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "order.json"
    path.write_text(content)
    with pytest.raises(typer.BadParameter, match=complaint):
        build_order(file=path)


def test_file_and_scenario_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(sample_order().model_dump_json())
    with pytest.raises(typer.BadParameter, match="not both"):
        build_order(file=path, scenario=Scenario.FULFILLED)


def test_an_invalid_override_names_the_field() -> None:
    with pytest.raises(typer.BadParameter, match=r"shipping_address\.country"):
        build_order(country="Germany")


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["order", "--item", "BAD"], "SKU:QTY:PRICE"),
        (["order", "--deadline", "soon"], "not a duration"),
        (["order", "--scenario", "lucky"], "lucky"),
        (["demo", "--orders", "0"], "--orders"),
    ],
)
def test_usage_errors_exit_2_before_any_broker_is_asked(
    arguments: list[str], complaint: str
) -> None:
    load_plugins()
    result = CliRunner().invoke(
        app, [*arguments, "--url", "amqp://guest:guest@127.0.0.1:1/"], terminal_width=200
    )
    assert result.exit_code == 2
    assert complaint in result.output
    assert "broker" not in result.output


def test_the_commands_are_registered_with_their_options() -> None:
    load_plugins()
    runner = CliRunner()
    order_help = runner.invoke(app, ["order", "--help"], terminal_width=200).output
    for option in ("--item", "--file", "--scenario", "--deadline", "--wait", "--timeout"):
        assert option in order_help
    demo_help = runner.invoke(app, ["demo", "--help"], terminal_width=200).output
    for option in ("--orders", "--no-start", "--json", "--url"):
        assert option in demo_help


def test_the_password_never_shows() -> None:
    assert redacted("amqp://guest:s3cret@broker:5672/vh") == "amqp://guest:***@broker:5672/vh"
    assert redacted("amqp://broker/") == "amqp://broker/"


def test_every_participant_is_a_demo_service_with_its_queues() -> None:
    services = demo_services()
    assert list(services) == ["inventory", "payment", "shipping", "notification"]
    assert services["payment"].app == "payment_service.main:create_app"
    assert consumed_queues(ORDER_SAGA, "inventory") == (
        "inventory.order.created",
        "inventory.payment.failed",
        "inventory.payment.refunded",
    )
    assert consumed_queues(ORDER_SAGA, "notification") == (
        "notification.shipment.created",
        "notification.order.cancelled",
    )


def test_six_orders_cover_every_scenario() -> None:
    assert set(scenarios_for(6)) == set(Scenario)
    assert scenarios_for(3) == list(Scenario)[:3]
    forty = scenarios_for(40)
    assert forty[:6] == list(Scenario)
    assert forty.count(Scenario.FULFILLED) >= 20
    assert set(forty[6:]) == set(Scenario)  # the failures keep coming after the first six


# -- reading how a saga ended --------------------------------------------------------------


def _saga(
    failed_step: str | None, *, after_ms: float = 120.0
) -> tuple[Envelope[Any], list[Envelope[Any]]]:
    order = sample_order()
    started = Envelope.new(order, context=SagaContext.start(ORDER_SAGA.saga_type), producer="test")
    context = started.context
    reserved = Envelope.new(
        InventoryReserved(order=order, reservation_id="r-1"),
        context=context.followed_by(
            started.event_id,
            StepRecord(
                step="reserve_stock",
                participant="inventory",
                outcome=StepOutcome.COMPLETED,
                at=utc_now(),
            ),
        ),
        producer="inventory",
    )
    last: Any
    if failed_step is None:
        last = OrderFulfilled(order=order, notification_id="n-1")
    else:
        last = OrderCancelled(order=order, failed_step=failed_step, reason="card_declined")
    end = Envelope.new(last, context=reserved.context, producer="inventory")
    end = end.model_copy(
        update={"occurred_at": started.occurred_at + timedelta(milliseconds=after_ms)}
    )
    return started, [started, reserved, end]


def test_a_fulfilled_saga_reads_as_fulfilled() -> None:
    started, events = _saga(None, after_ms=250)
    end = SagaEnd.read(started, events)
    assert (end.outcome, end.failed_step, len(end.events)) == ("fulfilled", None, 3)
    assert end.duration_ms == pytest.approx(250)


def test_a_cancelled_saga_names_the_failed_step() -> None:
    started, events = _saga("charge_payment")
    end = SagaEnd.read(started, events)
    assert (end.outcome, end.failed_step, end.reason) == (
        "cancelled",
        "charge_payment",
        "card_declined",
    )


def test_a_saga_without_a_terminal_event_is_pending() -> None:
    started, events = _saga(None)
    end = SagaEnd.read(started, events[:2])
    assert (end.outcome, end.duration_ms) == ("pending", None)


def test_each_event_describes_its_own_step() -> None:
    started, events = _saga("charge_payment")
    assert describe(started) == ""
    assert describe(events[1]) == "reserve_stock completed"
    # the cancellation adds no record of its own: it names the failed step instead
    assert describe(events[2]) == "cancelled: charge_payment (card_declined)"
    failed = Envelope.new(
        InventoryReservationFailed(order=sample_order(), reason="insufficient_stock"),
        context=started.context.followed_by(
            started.event_id,
            StepRecord(
                step="reserve_stock",
                participant="inventory",
                outcome=StepOutcome.FAILED,
                at=utc_now(),
                reason="insufficient_stock",
            ),
        ),
        producer="inventory",
    )
    assert describe(failed) == "reserve_stock failed (insufficient_stock)"


def test_the_demo_report_counts_outcomes_steps_and_latency() -> None:
    sagas = []
    for number, scenario in enumerate(list(Scenario) * 2):
        started, events = _saga(EXPECTED_FAILED_STEP[scenario], after_ms=100 + 10 * number)
        sagas.append(DemoSaga(scenario, SagaEnd.read(started, events)))
    pending_start, pending_events = _saga(None)
    sagas.append(DemoSaga(Scenario.FULFILLED, SagaEnd.read(pending_start, pending_events[:1])))
    report = DemoReport(sagas=sagas, wall_seconds=2.0, log_dir=None)

    summary = report.summary()
    assert summary["outcomes"] == {"fulfilled": 2, "cancelled": 10}
    assert summary["pending"] == 1
    assert summary["unexpected"] == 1
    assert summary["failed_steps"] == {
        "reserve_stock": 2,
        "charge_payment": 4,
        "ship_order": 2,
        "confirm_order": 2,
    }
    assert summary["sagas_per_s"] == 6.0
    assert summary["latency_ms"] == {"p50": 150.0, "p95": 210.0}
    assert not report.ok
    rows = json.loads(json.dumps(report.as_json()))["sagas"]
    assert [row["as_expected"] for row in rows] == [True] * 12 + [False]
    assert uuid.UUID(rows[0]["saga_id"])


def _readme_order_document() -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- order document -->", 1)[1].split("<!-- /order document -->")[0]
    return block.split("```json", 1)[1].split("```", 1)[0]


def test_the_readme_order_document_is_accepted_twice_as_two_orders(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(_readme_order_document())
    first, second = build_order(file=path), build_order(file=path)
    assert first.order_id != second.order_id  # "<new>": never a duplicate
    assert first.order_id.startswith("ord-")
    assert first.shipping_address.country == "DE"

    # the payload alone works too
    envelope = json.loads(_readme_order_document())
    path.write_text(json.dumps(envelope["payload"]))
    assert build_order(file=path).items[0].sku == "SKU-APPLE"
    # an explicit order id is kept
    envelope["payload"]["order_id"] = "ord-1001"
    path.write_text(json.dumps(envelope))
    assert build_order(file=path).order_id == "ord-1001"


def test_an_envelope_of_another_event_is_refused(tmp_path: Path) -> None:
    envelope = json.loads(_readme_order_document())
    envelope["event_type"] = "payment.failed"
    path = tmp_path / "order.json"
    path.write_text(json.dumps(envelope))
    with pytest.raises(typer.BadParameter, match=r"saga order sends 'order\.created'"):
        build_order(file=path)
