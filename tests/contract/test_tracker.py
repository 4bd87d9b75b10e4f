"""Contract of the saga tracker, alone on an in-memory broker.

The tracker consumes every event of the flow and publishes nothing. These tests publish a
saga's events as the participants would and read the tracker's database back: states,
steps, deduplication, stuck detection, the rebuild from an outbox, and the ``saga status``
and ``saga list`` commands. Run it on its own: ``uv run pytest tests/contract/test_tracker.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from faststream.rabbit import QueueType, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from inventory_service.main import create_service as create_inventory
from inventory_service.settings import InventorySettings
from order_contracts import (
    ORDER_SAGA,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    PaymentFailed,
    PaymentProcessed,
    ShipmentCreated,
)
from order_contracts.samples import sample_order
from prometheus_client import REGISTRY
from sagakit import Envelope, EventPayload, SagaContext, StepOutcome, StepRecord, utc_now
from sagakit.broker import flow_exchange
from sagakit.cli import app as saga_cli
from sagakit.cli import load_plugins
from sagakit.testing import ParticipantHarness
from sagakit.tracker import (
    TRACKER_QUEUE,
    SagaState,
    TrackerService,
    TrackerSettings,
    build_tracker,
    tracker_queue,
    tracker_store,
)
from sagakit.tracker._app import scan_once
from typer.testing import CliRunner

EXCHANGE = flow_exchange(ORDER_SAGA.exchange)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Saga:
    """Builds a saga's events as its participants would emit them."""

    def __init__(self, order: OrderCreated, *, deadline: datetime | None = None) -> None:
        self.order = order
        self.created = Envelope.new(
            order,
            context=SagaContext.start(ORDER_SAGA.saga_type, deadline=deadline),
            producer="client",
        )
        self.last: Envelope[Any] = self.created

    @property
    def saga_id(self) -> str:
        return str(self.created.context.saga_id)

    def next(
        self,
        payload: EventPayload,
        producer: str,
        step: str | None = None,
        outcome: StepOutcome = StepOutcome.COMPLETED,
        reason: str | None = None,
    ) -> Envelope[Any]:
        record = (
            StepRecord(
                step=step, participant=producer, outcome=outcome, at=utc_now(), reason=reason
            )
            if step
            else None
        )
        context = self.last.context.followed_by(self.last.event_id, record)
        self.last = Envelope.new(payload, context=context, producer=producer)
        return self.last

    def fulfilled(self) -> list[Envelope[Any]]:
        order = self.order
        return [
            self.created,
            self.next(
                InventoryReserved(order=order, reservation_id="r-1"), "inventory", "reserve_stock"
            ),
            self.next(
                PaymentProcessed(
                    order=order, payment_id="p-1", amount=order.total(), currency="EUR"
                ),
                "payment",
                "charge_payment",
            ),
            self.next(
                ShipmentCreated(order=order, shipment_id="s-1", tracking_number="T-1"),
                "shipping",
                "ship_order",
            ),
            self.next(
                OrderFulfilled(order=order, notification_id="n-1"), "notification", "confirm_order"
            ),
        ]

    def declined(self) -> list[Envelope[Any]]:
        order = self.order
        return [
            self.created,
            self.next(
                InventoryReserved(order=order, reservation_id="r-1"), "inventory", "reserve_stock"
            ),
            self.next(
                PaymentFailed(order=order, reason="card_declined", detail="declined"),
                "payment",
                "charge_payment",
                StepOutcome.FAILED,
                "card_declined",
            ),
            self.next(
                InventoryReleased(order=order, reservation_id="r-1"),
                "inventory",
                "reserve_stock",
                StepOutcome.COMPENSATED,
            ),
            self.next(
                OrderCancelled(order=order, failed_step="charge_payment", reason="card_declined"),
                "inventory",
            ),
        ]


class Tracker:
    """The tracker on TestRabbitBroker, with a spy on everything that crosses the exchange."""

    def __init__(self, service: TrackerService) -> None:
        self.service = service
        self.seen_on_exchange: list[str] = []
        self.published = 0

    async def publish(self, envelope: Envelope[Any], *, traced: bool = True) -> None:
        self.published += 1
        await self.service.broker.publish(
            envelope.encode(),
            exchange=EXCHANGE,
            routing_key=envelope.event_type,
            headers={**envelope.amqp_headers(), **({"traceparent": TRACEPARENT} if traced else {})},
            message_id=str(envelope.event_id),
            correlation_id=str(envelope.context.saga_id),
            message_type=envelope.event_type,
        )

    async def publish_raw(self, body: bytes, routing_key: str) -> None:
        self.published += 1
        await self.service.broker.publish(body, exchange=EXCHANGE, routing_key=routing_key)


@pytest.fixture
async def tracker(tmp_path: Any) -> AsyncIterator[Tracker]:
    settings = TrackerSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/tracker.db")
    service = build_tracker(ORDER_SAGA, settings, configure_logs=False)
    tracker = Tracker(service)

    @service.broker.subscriber(RabbitQueue("test.spy", routing_key="#"), EXCHANGE)
    async def spy(message: RabbitMessage) -> None:
        tracker.seen_on_exchange.append(str(message.raw_message.routing_key))

    await service.store.create_schema()
    async with TestRabbitBroker(service.broker):
        yield tracker
    await service.store.dispose()


def counted(event_type: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "sagakit_tracker_events_total", {"event_type": event_type, "result": result}
    )
    return value or 0.0


def test_the_tracker_queue_is_durable_quorum_and_bound_to_every_event() -> None:
    queue = tracker_queue()
    assert queue.name == TRACKER_QUEUE == "tracker.events"
    assert queue.durable
    assert queue.arguments is not None
    assert queue.arguments["x-queue-type"] == QueueType.QUORUM.value
    assert queue.routing() == "#"


async def test_a_fulfilled_saga_moves_from_started_to_completed(tracker: Tracker) -> None:
    saga = Saga(sample_order())
    store = tracker.service.store
    states = []
    for envelope in saga.fulfilled():
        await tracker.publish(envelope)
        view = await store.view(saga.saga_id)
        assert view is not None
        states.append(view.state)
    assert view is not None
    assert states == [
        SagaState.STARTED,
        SagaState.PENDING,
        SagaState.PENDING,
        SagaState.PENDING,
        SagaState.COMPLETED,
    ]
    assert view.trace_id == TRACE_ID
    assert view.last_event_type == "order.fulfilled"
    assert view.ended_at is not None
    assert [s.outcome for s in view.steps] == ["completed"] * 4
    [row] = await store.sagas(state=SagaState.COMPLETED)
    assert row.saga_id == saga.saga_id
    assert row.event_count == 5


async def test_a_declined_saga_compensates_then_fails(tracker: Tracker) -> None:
    saga = Saga(sample_order())
    store = tracker.service.store
    states = []
    for envelope in saga.declined():
        await tracker.publish(envelope)
        view = await store.view(saga.saga_id)
        assert view is not None
        states.append(view.state)
    assert view is not None
    assert states == [
        SagaState.STARTED,
        SagaState.PENDING,
        SagaState.COMPENSATING,
        SagaState.COMPENSATING,
        SagaState.FAILED,
    ]
    [row] = await store.sagas(state=SagaState.FAILED)
    assert (row.failed_step, row.failure_reason) == ("charge_payment", "card_declined")
    assert {s.step: s.outcome for s in view.steps}["reserve_stock"] == "compensated"


async def test_redelivered_events_are_recorded_once(tracker: Tracker) -> None:
    saga = Saga(sample_order())
    created, reserved = saga.fulfilled()[:2]
    before = counted("inventory.reserved", "duplicate")
    for envelope in (created, reserved, reserved, created, reserved):
        await tracker.publish(envelope)
    view = await tracker.service.store.view(saga.saga_id)
    assert view is not None
    assert view.event_count == 2
    assert len(await tracker.service.store.events(saga.saga_id)) == 2
    assert counted("inventory.reserved", "duplicate") == before + 2


async def test_events_arriving_out_of_order_give_the_same_saga(tracker: Tracker) -> None:
    saga = Saga(sample_order())
    events = saga.declined()
    for envelope in reversed(events):
        await tracker.publish(envelope)
    view = await tracker.service.store.view(saga.saga_id)
    assert view is not None
    assert view.state is SagaState.FAILED
    assert view.started_at == events[0].occurred_at
    assert view.last_event_type == "order.cancelled"


async def test_the_tracker_never_publishes(tracker: Tracker) -> None:
    for envelope in Saga(sample_order()).declined():
        await tracker.publish(envelope)
    await tracker.publish_raw(b"not an event", "order.created")
    assert len(tracker.seen_on_exchange) == tracker.published


async def test_what_is_not_an_event_is_acked_and_ignored(tracker: Tracker) -> None:
    before = counted("unknown", "undecodable")
    await tracker.publish_raw(b"{not json", "order.created")
    await tracker.publish_raw(json.dumps({"event_type": "order.created"}).encode(), "x")
    assert counted("unknown", "undecodable") == before + 2
    assert await tracker.service.store.sagas() == []


async def test_a_saga_that_stops_moving_is_stuck(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    store = tracker.service.store
    stalled, done = Saga(sample_order()), Saga(sample_order())
    stalled_events = stalled.fulfilled()[:2]
    for envelope in stalled_events + done.fulfilled():
        await tracker.publish(envelope)
    await asyncio.sleep(0.05)
    moving = Saga(sample_order())
    await tracker.publish(moving.created)
    threshold = timedelta(seconds=60)
    later = utc_now() + timedelta(seconds=61)

    assert await store.sagas(stuck_after=threshold) == []
    stuck = await store.sagas(stuck_after=threshold, now=later)
    assert {row.saga_id for row in stuck} == {moving.saga_id, stalled.saga_id}
    assert await store.count_stuck(stuck_after=threshold, now=later) == 2
    # Only the one that has been idle longest, with a threshold between the two.
    idle = later - stalled_events[-1].occurred_at - timedelta(milliseconds=20)
    assert [row.saga_id for row in await store.sagas(stuck_after=idle, now=later)] == [
        stalled.saga_id
    ]

    with caplog.at_level(logging.WARNING, logger="sagakit.tracker"):
        reported = await scan_once(store, timedelta(seconds=0), set())
    assert reported == {moving.saga_id, stalled.saga_id}
    assert REGISTRY.get_sample_value("sagakit_tracker_stuck_sagas") == 2
    assert REGISTRY.get_sample_value("sagakit_tracker_sagas", {"state": "fulfilled"}) == 1
    warned = {r.saga_id for r in caplog.records if r.getMessage().startswith("saga is stuck")}  # type: ignore[attr-defined]
    assert warned == reported
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sagakit.tracker"):
        await scan_once(store, timedelta(seconds=0), reported)
    assert not caplog.records, "a stuck saga is reported once"


async def test_a_saga_past_its_deadline_is_stuck_at_once(tracker: Tracker) -> None:
    saga = Saga(sample_order(), deadline=utc_now() + timedelta(seconds=1))
    await tracker.publish(saga.created)
    store = tracker.service.store
    hour = timedelta(hours=1)
    assert await store.sagas(stuck_after=hour) == []
    [row] = await store.sagas(stuck_after=hour, now=utc_now() + timedelta(seconds=2))
    assert row.saga_id == saga.saga_id
    reason = row.stuck_reason(now=utc_now() + timedelta(seconds=2), stuck_after=hour)
    assert reason is not None
    assert reason.startswith("past its deadline")


async def test_the_tracker_is_rebuilt_from_a_participants_outbox(tmp_path: Any) -> None:
    inventory_db = f"sqlite+aiosqlite:///{tmp_path}/inventory.db"
    inventory = create_inventory(InventorySettings(database_url=inventory_db))
    async with ParticipantHarness(inventory) as harness:
        for _ in range(2):
            created = harness.start_saga(sample_order())
            await harness.publish(created)
        saga_ids = {str(e.context.saga_id) for e in harness.emitted}
    assert harness.emitted_types == ["inventory.reserved", "inventory.reserved"]

    async with tracker_store(
        f"sqlite+aiosqlite:///{tmp_path}/tracker.db", spec=ORDER_SAGA
    ) as store:
        assert await store.rebuild_from_outbox(inventory_db) == (2, 2)
        assert await store.rebuild_from_outbox(inventory_db) == (2, 0)
        rows = await store.sagas()
        with pytest.raises(FileNotFoundError):
            await store.rebuild_from_outbox(f"sqlite+aiosqlite:///{tmp_path}/missing.db")
    assert {row.saga_id for row in rows} == saga_ids
    assert {row.state for row in rows} == {SagaState.PENDING}


def _seed(url: str, *envelopes: Envelope[Any]) -> None:
    from sagakit.tracker import decode_event

    async def seed() -> None:
        async with tracker_store(url, spec=ORDER_SAGA) as store:
            for envelope in envelopes:
                await store.record(decode_event(envelope.encode(), {"traceparent": TRACEPARENT}))

    asyncio.run(seed())


def test_saga_status_and_saga_list_read_the_tracker_database(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/tracker.db"
    done, stalled = Saga(sample_order()), Saga(sample_order())
    _seed(url, *done.declined(), *stalled.fulfilled()[:2])
    expected_timeline = [
        "order.created",
        "inventory.reserved",
        "payment.failed",
        "inventory.released",
        "order.cancelled",
    ]
    monkeypatch.setenv("TRACKER_DATABASE_URL", url)
    monkeypatch.setenv("SAGA_SPEC", "order_contracts:ORDER_SAGA")
    monkeypatch.setenv("COLUMNS", "200")
    load_plugins()
    runner = CliRunner()

    status = runner.invoke(saga_cli, ["status", done.saga_id])
    assert status.exit_code == 0, status.output
    assert "cancelled" in status.output
    assert TRACE_ID in status.output
    assert "charge_payment: card_declined" in status.output
    for event_type in expected_timeline:
        assert event_type in status.output

    as_json = json.loads(runner.invoke(saga_cli, ["status", done.saga_id, "--json"]).output)
    assert as_json["state"] == "cancelled"
    assert as_json["trace_id"] == TRACE_ID
    assert [e["event_type"] for e in as_json["timeline"]] == expected_timeline

    unknown = runner.invoke(saga_cli, ["status", "00000000-0000-0000-0000-000000000000"])
    assert unknown.exit_code == 1

    listed = json.loads(runner.invoke(saga_cli, ["list", "--json"]).output)
    assert {r["saga_id"] for r in listed} == {done.saga_id, stalled.saga_id}
    failed = json.loads(runner.invoke(saga_cli, ["list", "--state", "cancelled", "--json"]).output)
    assert [r["saga_id"] for r in failed] == [done.saga_id]
    assert json.loads(runner.invoke(saga_cli, ["list", "--stuck", "--json"]).output) == []
    stuck = json.loads(
        runner.invoke(saga_cli, ["list", "--stuck", "--stuck-after", "0", "--json"]).output
    )
    assert [r["saga_id"] for r in stuck] == [stalled.saga_id]
    assert stuck[0]["stuck"].startswith("no event for")
    table = runner.invoke(saga_cli, ["list"])
    assert table.exit_code == 0
    assert stalled.saga_id[:8] in table.output  # short ids; --wide for whole ones
