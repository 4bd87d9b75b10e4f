"""The order saga end to end: real RabbitMQ, each participant its own process, SQLite stores."""

from __future__ import annotations

import asyncio
import itertools
import json
from decimal import Decimal

import pytest
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order

from .conftest import OrderSystem, event_types

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

FORWARD = ["order.created", "inventory.reserved", "payment.processed", "shipment.created"]


async def test_a_saga_completes(order_system: OrderSystem) -> None:
    before = await order_system.stock("SKU-APPLE")
    events = await order_system.run(Scenario.FULFILLED)
    assert event_types(events) == [*FORWARD, "order.fulfilled"]
    saga = str(events[0].context.saga_id)
    # causation chains every event to the one before it; steps accumulate in order
    for cause, effect in itertools.pairwise(events):
        assert effect.context.causation_id == cause.event_id
    assert [s.step for s in events[-1].context.steps] == [
        "reserve_stock",
        "charge_payment",
        "ship_order",
        "confirm_order",
    ]
    assert await order_system.stock("SKU-APPLE") == before - 2
    [payment] = await order_system.rows(
        "payment", "SELECT * FROM payments WHERE saga_id = :s", s=saga
    )
    assert (payment["status"], Decimal(str(payment["amount"]))) == ("captured", Decimal("3.00"))
    [shipment] = await order_system.rows(
        "shipping", "SELECT * FROM shipments WHERE saga_id = :s", s=saga
    )
    assert shipment["status"] == "booked"
    notices = await order_system.rows(
        "notification", "SELECT kind FROM notices WHERE saga_id = :s", s=saga
    )
    assert notices == [{"kind": "confirmation"}]


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (
            Scenario.OUT_OF_STOCK,
            ["order.created", "inventory.reservation_failed", "order.cancelled"],
        ),
        (
            Scenario.CARD_DECLINED,
            [
                "order.created",
                "inventory.reserved",
                "payment.failed",
                "inventory.released",
                "order.cancelled",
            ],
        ),
        (
            Scenario.NOT_SERVED,
            [
                *FORWARD[:3],
                "shipment.failed",
                "payment.refunded",
                "inventory.released",
                "order.cancelled",
            ],
        ),
        (
            Scenario.UNREACHABLE,
            [
                *FORWARD,
                "notification.failed",
                "shipment.cancelled",
                "payment.refunded",
                "inventory.released",
                "order.cancelled",
            ],
        ),
    ],
    ids=["step1-inventory", "step2-payment", "step3-shipping", "step4-notification"],
)
async def test_a_failure_at_each_step_is_undone_in_reverse_order(
    order_system: OrderSystem, scenario: Scenario, expected: list[str]
) -> None:
    stock_before = await order_system.stock("SKU-APPLE")
    rare_before = await order_system.stock("SKU-RARE")
    events = await order_system.run(scenario)
    assert event_types(events) == expected
    saga = str(events[0].context.saga_id)

    cancelled = events[-1]
    failed_step = {
        Scenario.OUT_OF_STOCK: "reserve_stock",
        Scenario.CARD_DECLINED: "charge_payment",
        Scenario.NOT_SERVED: "ship_order",
        Scenario.UNREACHABLE: "confirm_order",
    }[scenario]
    assert cancelled.payload.failed_step == failed_step
    assert (
        cancelled.payload.reason == scenario.value
        if scenario is not Scenario.OUT_OF_STOCK
        else "insufficient_stock"
    )

    # every service's local state is back to "nothing happened"
    assert await order_system.stock("SKU-APPLE") == stock_before
    assert await order_system.stock("SKU-RARE") == rare_before
    reservations = await order_system.rows(
        "inventory", "SELECT status FROM reservations WHERE saga_id = :s", s=saga
    )
    assert reservations in ([], [{"status": "released"}])
    payments = await order_system.rows(
        "payment", "SELECT status FROM payments WHERE saga_id = :s", s=saga
    )
    refunds = await order_system.rows(
        "payment",
        "SELECT r.amount FROM refunds r JOIN payments p ON p.payment_id = r.payment_id "
        "WHERE p.saga_id = :s",
        s=saga,
    )
    if "payment.processed" in expected:
        assert payments == [{"status": "refunded"}]
        assert [Decimal(str(r["amount"])) for r in refunds] == [Decimal("3.00")]
    else:
        assert payments == []
    shipments = await order_system.rows(
        "shipping", "SELECT status FROM shipments WHERE saga_id = :s", s=saga
    )
    assert shipments == ([{"status": "cancelled"}] if "shipment.created" in expected else [])
    await asyncio.sleep(0.5)  # the notice is written when order.cancelled is consumed
    notices = await order_system.rows(
        "notification", "SELECT kind FROM notices WHERE saga_id = :s ORDER BY kind", s=saga
    )
    assert notices == [{"kind": "cancellation"}]


async def test_a_duplicate_delivery_changes_nothing(order_system: OrderSystem) -> None:
    before = await order_system.stock("SKU-APPLE")
    client, watch = order_system.client, order_system.watch
    created = client.new_saga(sample_order(Scenario.FULFILLED))
    await client.publish(created)
    await client.publish(created)  # the same event delivered twice
    events = await watch.wait_for_end(created.context.saga_id, timeout=30)
    assert event_types(events) == [*FORWARD, "order.fulfilled"]
    # now replay a mid-saga event (payment.processed) as if the broker redelivered it
    processed = next(e for e in events if e.event_type == "payment.processed")
    await client.publish(processed)
    await asyncio.sleep(1.0)
    assert event_types(watch.events(created.context.saga_id)) == [*FORWARD, "order.fulfilled"]
    saga = str(created.context.saga_id)
    assert await order_system.stock("SKU-APPLE") == before - 2
    assert (
        len(
            await order_system.rows(
                "shipping", "SELECT 1 FROM shipments WHERE saga_id = :s", s=saga
            )
        )
        == 1
    )
    assert (
        len(await order_system.rows("payment", "SELECT 1 FROM payments WHERE saga_id = :s", s=saga))
        == 1
    )


async def test_an_undecodable_message_is_parked_and_the_next_order_completes(
    order_system: OrderSystem,
) -> None:
    import aio_pika

    await order_system.client.publish_raw(b"\xff{ this is not json", "order.created")
    valid = sample_order().model_dump(mode="json")
    await order_system.client.publish_raw(
        json.dumps({"event_type": "order.created", "payload": valid}).encode(), "order.created"
    )
    events = await order_system.run(Scenario.FULFILLED)
    assert event_types(events)[-1] == "order.fulfilled"

    connection = await aio_pika.connect(order_system.procs.url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("inventory.dlq", passive=True)
        parked: list[aio_pika.abc.AbstractIncomingMessage] = []
        async with asyncio.timeout(10):
            while len(parked) < 2:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                    continue
                parked.append(message)
        reasons = sorted(str(m.headers["x-saga-dead-letter-reason"]).split(":")[0] for m in parked)
        assert reasons == ["schema_invalid", "undecodable"]
        assert all(m.headers["x-saga-origin-queue"] == "inventory.order.created" for m in parked)
        assert (
            parked[0].body in {b"\xff{ this is not json"}
            or parked[1].body == b"\xff{ this is not json"
        )
    finally:
        await connection.close()
    assert ORDER_SAGA.step("reserve_stock").participant == "inventory"
