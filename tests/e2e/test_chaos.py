"""The chaos run (``python -m sagakit_chaos``), small and seeded: 100 sagas meet every fault kind.

Kills (random and at crash points), a broker restart, connection cuts and latency through
the proxy, duplicated events, garbage under real routing keys and business failures at
every step; full and read-only volumes under the SQLite stores, poison headers,
amplification, conflicting duplicates and strangers' backward events; then no saga may be
stranded or wrongly cancelled, and nothing lost, applied twice or end against the rules, by
the services' own stores, the dead-letter queues and the independent ledger.

The run starts a RabbitMQ node of its own (sagakit_lab) and restarts that one: it needs
``rabbitmq-server`` installed (skipped without it, failed with ``CI=true``) and never
touches the broker a developer runs. A second test feeds the audit a doctored end state,
to show that its checks can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sagakit_chaos
from aio_pika.abc import AbstractIncomingMessage
from sagakit_lab import rabbitmq_missing

from tests.brokers import unavailable

SEED = 20251124
SAGAS = 100
BUDGET_SECONDS = 180


@pytest.mark.e2e
@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_seeded_chaos_run_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    reason = rabbitmq_missing()
    if reason is not None:
        unavailable(f"the chaos run restarts a RabbitMQ node of its own: {reason}")
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "sagakit_chaos",
        f"--sagas={SAGAS}",
        f"--seed={SEED}",
        "--rate=5",
        "--settle-timeout=90",
        f"--workdir={tmp_path / 'run'}",
        f"--json={report_path}",
    ]
    began = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=BUDGET_SECONDS + 30)
    elapsed = time.monotonic() - began
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-6000:]}"
    report = json.loads(report_path.read_text())

    assert report["seed"] == SEED
    verdicts = ("stranded", "wrongly_cancelled", "lost", "applied_twice", "wrong_outcomes")
    assert {verdict: report[verdict] for verdict in verdicts} == dict.fromkeys(verdicts, 0)
    assert [c["check"] for c in report["checks"] if c["failed"]] == []
    beside = report["notes"]["valid sagas started beside hostile input"]
    assert sum(report["outcomes"].values()) == SAGAS + beside
    assert report["outcomes"].get("pending", 0) == 0
    # every kind of fault happened, and the business failures hit every step; a store outage
    # needs PostgreSQL, and the volumes root (which CI has)
    cannot = set(report["unavailable_kinds"])
    assert cannot - {"store_outage"} <= (set() if os.environ.get("CI") else cannot)
    kinds = [kind.value for kind in sagakit_chaos.FaultKind if kind.value not in cannot]
    assert [kind for kind in kinds if not report["faults"].get(kind)] == []
    cancelled_at = {
        outcome.removeprefix("cancelled at ")
        for outcome in report["outcomes"]
        if outcome.startswith("cancelled at ")
    }
    assert cancelled_at == {"reserve_stock", "charge_payment", "ship_order", "confirm_order"}
    notes = report["notes"]
    assert notes["duplicates seen on the exchange"] == notes["duplicated events"]
    assert elapsed < BUDGET_SECONDS, f"the chaos run took {elapsed:.0f}s"


# -- the audit itself can fail -----------------------------------------------------------


def _event(saga: str, event_type: str, **payload: Any) -> AbstractIncomingMessage:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{saga}/{event_type}"))
    body = {
        "event_id": event_id,
        "event_type": event_type,
        "context": {"saga_id": saga},
        "payload": payload,
    }
    # A stand-in with the attributes the ledger reads from a delivered message.
    stand_in = SimpleNamespace(
        message_id=event_id,
        routing_key=event_type,
        body=json.dumps(body).encode(),
        headers={},
        correlation_id=saga,
        type=event_type,
        content_type="application/json",
    )
    return cast(AbstractIncomingMessage, stand_in)


def test_the_audit_finds_lost_and_doubled_effects() -> None:
    from order_contracts import ORDER_SAGA
    from order_contracts.samples import Scenario, sample_order

    fulfilled, declined, stuck = (str(uuid.uuid4()) for _ in range(3))
    planned = {
        fulfilled: sagakit_chaos.PlannedOrder(Scenario.FULFILLED, sample_order()),
        declined: sagakit_chaos.PlannedOrder(
            Scenario.CARD_DECLINED, sample_order(Scenario.CARD_DECLINED)
        ),
        stuck: sagakit_chaos.PlannedOrder(Scenario.FULFILLED, sample_order()),
    }
    ledger = sagakit_chaos.Ledger("amqp://unused", spec=ORDER_SAGA)
    trails = {
        fulfilled: [
            "order.created",
            "inventory.reserved",
            "payment.processed",
            "shipment.created",
            "order.fulfilled",
        ],
        declined: ["order.created", "inventory.reserved", "payment.failed", "inventory.released"],
        stuck: ["order.created", "inventory.reserved"],
    }
    for saga, types in trails.items():
        for event_type in types:
            ledger._record(_event(saga, event_type))
    ledger._record(
        _event(declined, "order.cancelled", failed_step="charge_payment", reason="card_declined")
    )
    initial = sagakit_chaos.INITIAL_STOCK
    two_apples = {"SKU-APPLE": 2}
    stores = sagakit_chaos.StoreState(
        # the declined order's release never happened; the stuck one holds its stock
        stock={**initial, "SKU-APPLE": initial["SKU-APPLE"] - 6},
        reservations={fulfilled: "active", declined: "active", stuck: "active"},
        reserved={fulfilled: two_apples, declined: two_apples, stuck: two_apples},
        # the fulfilled order was charged twice its total
        payments={fulfilled: ("pay-1", Decimal("6.00"), "captured")},
        refunds={},
        shipments={fulfilled: "booked"},
        # and told twice, once of each kind
        notices={fulfilled: ["confirmation", "cancellation"], declined: ["cancellation"]},
        pending_outbox={"inventory": 0, "payment": 1, "shipping": 0, "notification": 0},
        inbox_rows=0,
    )
    result = sagakit_chaos.audit(
        spec=ORDER_SAGA,
        # a zombie still holds its queue beside the new process
        consumers={"payment.inventory.reserved": 2, "inventory.order.created": 1},
        planned=planned,
        ledger=ledger,
        parked=[],
        stores=stores,
        malformed={
            "chaos-malformed-0001": sagakit_chaos.Malformed(
                "chaos-malformed-0001", "order.created", "bytes", frozenset({"inventory"})
            )
        },
        duplicated=[],
    )
    failed = {check.name: check.failures for check in result.checks if check.failures}
    assert set(failed) == {
        "every saga ended (or is parked where the run expects it)",
        "cancelled: no stock held",
        "fulfilled: charged once, the order's total",
        "exactly one notice per saga: never two",
        "stock per SKU = initial - fulfilled orders",
        "charged - refunded = total of fulfilled orders",
        "every bad message parked by each consumer, with a reason",
        "every committed event published (outbox drained)",
        "one consumer per work queue at the end (none missing, no zombie)",
    }
    assert failed["every saga ended (or is parked where the run expects it)"] == [
        f"{stuck} (fulfilled) stopped after inventory.reserved"
    ]
    assert result.stranded == 1
    assert result.lost >= 5
    assert result.applied_twice >= 2  # two notices; more charged than the fulfilled orders


def _parked(service: str, message_id: str, saga: str, reason: str) -> Any:
    from sagakit.client import ParkedMessage

    return ParkedMessage(
        service=service,
        id=message_id,
        reason=reason,
        saga_id=saga,
        event_type="",
        first_failure_at="",
        origin_queue="",
        body=b"",
    )


def test_the_audit_finds_stranded_wrongly_cancelled_and_strangers() -> None:
    from order_contracts import ORDER_SAGA
    from order_contracts.samples import Scenario, sample_order

    outage, parked, large, stranger = (str(uuid.uuid4()) for _ in range(4))
    planned = {
        # a valid order, cancelled because a database was down
        outage: sagakit_chaos.PlannedOrder(Scenario.FULFILLED, sample_order()),
        # a valid order whose charge was parked: it never ends
        parked: sagakit_chaos.PlannedOrder(Scenario.FULFILLED, sample_order()),
        # an order too large to travel, parked where and why the run allows
        large: sagakit_chaos.PlannedOrder(
            Scenario.FULFILLED,
            sample_order(),
            override=(sagakit_chaos.ANY_STEP, "event_too_large"),
            may_park=("inventory", "too_large"),
        ),
    }
    ledger = sagakit_chaos.Ledger("amqp://unused", spec=ORDER_SAGA)
    for event_type in ("order.created", "inventory.reservation_failed"):
        ledger._record(_event(outage, event_type))
    ledger._record(
        _event(outage, "order.cancelled", failed_step="reserve_stock", reason="retries_exhausted")
    )
    for event_type in ("order.created", "inventory.reserved"):
        ledger._record(_event(parked, event_type))
    ledger._record(_event(large, "order.created"))
    # a stranger's payment.failed, and what inventory made of it
    for event_type in ("payment.failed", "inventory.released", "order.cancelled"):
        ledger._record(_event(stranger, event_type))
    stranger_id = ledger.by_saga[stranger][0].message_id
    created = ledger.by_saga[outage][0].message_id
    initial = sagakit_chaos.INITIAL_STOCK
    stores = sagakit_chaos.StoreState(
        stock={**initial, "SKU-APPLE": initial["SKU-APPLE"] - 2},
        reservations={parked: "active", stranger: "released"},
        reserved={parked: {"SKU-APPLE": 2}},
        payments={},
        refunds={},
        shipments={},
        notices={outage: ["cancellation"], stranger: ["cancellation"]},
        pending_outbox=dict.fromkeys(("inventory", "payment", "shipping", "notification"), 0),
        inbox_rows=0,
    )
    expected = {
        # a stranger's event inventory should have parked as unknown_saga, and did not
        stranger_id: sagakit_chaos.Malformed(
            stranger_id, "payment.failed", "stranger", frozenset({"inventory"}), ("unknown_saga",)
        ),
        # a conflicting copy only the broker's delivery limit stopped
        created: sagakit_chaos.Malformed(
            created, "order.created", "conflict", frozenset({"inventory"}), ("conflicting",)
        ),
    }
    result = sagakit_chaos.audit(
        spec=ORDER_SAGA,
        consumers={},
        planned=planned,
        ledger=ledger,
        parked=[
            _parked("payment", "charge-1", parked, "compensation_failed: database down"),
            _parked("inventory", "big-1", large, "event_too_large: 6854 bytes"),
            _parked("inventory", created, outage, "broker: delivery_limit"),
            # a copy of an event of a saga that ended, parked for no expected reason
            _parked("notification", "copy-1", outage, "too_large: 262175 bytes"),
        ],
        stores=stores,
        malformed=expected,
        duplicated=[],
    )
    failed = {check.name: check.failures for check in result.checks if check.failures}
    assert set(failed) == {
        "every saga ended (or is parked where the run expects it)",
        "cancelled only by the rules: at their step, for their reason (never for a fault)",
        "every bad message parked by each consumer, with a reason",
        "every bad message parked for the right reason",
        "nothing parked that the run does not expect",
        "sagas nobody started changed nothing",
    }
    assert failed["every saga ended (or is parked where the run expects it)"] == [
        f"{parked} (fulfilled) parked at payment: 'compensation_failed: database down'"
    ]
    assert failed[
        "cancelled only by the rules: at their step, for their reason (never for a fault)"
    ] == [f"{outage}: a valid order cancelled at reserve_stock (retries_exhausted)"]
    assert len(failed["sagas nobody started changed nothing"]) == 3  # two events, one notice
    assert (result.stranded, result.wrongly_cancelled) == (1, 1)
    assert result.notes["cancelled for a fault (retries exhausted, deadline)"] == 1
