"""Contract of the inventory participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_inventory.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from inventory_service.main import create_service
from inventory_service.settings import InventorySettings
from inventory_service.tables import Reservation, ReservationLine, Stock
from order_contracts import (
    ORDER_SAGA,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    PaymentRefunded,
    ShipmentFailed,
)
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, EventPayload, SagaService, StepOutcome
from sagakit.testing import ParticipantConformance, ParticipantHarness
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(InventorySettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def stock_levels(service: SagaService) -> dict[str, int]:
    async with service.store.read() as session:
        rows = (await session.execute(select(Stock))).scalars()
        return {row.sku: row.available for row in rows}


async def reservations(service: SagaService) -> list[Reservation]:
    async with service.store.read() as session:
        return list((await session.execute(select(Reservation))).scalars())


async def reserve(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """Start a saga for ``order`` and return the inventory.reserved it produced."""
    created = harness.start_saga(order)
    await harness.publish(created)
    assert harness.emitted_types == ["inventory.reserved"]
    return harness.emitted[-1]


def payment_failed(harness: ParticipantHarness, reserved: Envelope[Any]) -> Envelope[Any]:
    """payment.failed (card_declined) after ``reserved``, as payment would emit it."""
    payload = PaymentFailed(order=reserved.payload.order, reason="card_declined", detail="declined")
    return harness.event_after(
        reserved,
        payload,
        producer="payment",
        step="charge_payment",
        outcome=StepOutcome.FAILED,
        reason="card_declined",
    )


def payment_refunded(harness: ParticipantHarness, reserved: Envelope[Any]) -> Envelope[Any]:
    """The backward path from a shipment that failed, up to payment.refunded."""
    order = reserved.payload.order
    total = order.total()
    processed = harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="pay-1", amount=total, currency=order.currency),
        producer="payment",
        step="charge_payment",
    )
    failed = harness.event_after(
        processed,
        ShipmentFailed(order=order, reason="destination_not_served"),
        producer="shipping",
        step="ship_order",
        outcome=StepOutcome.FAILED,
        reason="destination_not_served",
    )
    return harness.event_after(
        failed,
        PaymentRefunded(order=order, payment_id="pay-1", amount=total),
        producer="payment",
        step="charge_payment",
        outcome=StepOutcome.COMPENSATED,
    )


async def test_order_created_reserves_stock(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order()
    created = harness.start_saga(order)

    await harness.publish(created)

    [reserved] = check_wire(
        harness.emitted, ["inventory.reserved"], producer="inventory", cause=created, order=order
    )
    assert isinstance(reserved.payload, InventoryReserved)
    assert reserved.payload.reservation_id
    record = reserved.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "reserve_stock",
        "inventory",
        StepOutcome.COMPLETED,
    )
    levels = await stock_levels(harness.service)
    assert levels["SKU-APPLE"] == 1000 - 2
    assert levels["SKU-PEAR"] == 1000
    [reservation] = await reservations(harness.service)
    assert reservation.saga_id == str(created.context.saga_id)
    assert reservation.reservation_id == reserved.payload.reservation_id
    assert reservation.order_id == order.order_id
    assert reservation.status == "active"
    async with harness.service.store.read() as session:
        lines = (await session.execute(select(ReservationLine))).scalars().all()
    assert [(line.sku, line.quantity) for line in lines] == [("SKU-APPLE", 2)]


async def test_lines_of_one_sku_are_reserved_together(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    base = sample_order()
    line = base.items[0]
    order = base.model_copy(update={"items": (line, line.model_copy(update={"quantity": 5}))})
    created = harness.start_saga(order)

    await harness.publish(created)

    check_wire(
        harness.emitted, ["inventory.reserved"], producer="inventory", cause=created, order=order
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000 - 7


async def test_insufficient_stock_fails_the_step_and_cancels_the_order(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.OUT_OF_STOCK)
    created = harness.start_saga(order)

    await harness.publish(created)

    failed, cancelled = check_wire(
        harness.emitted,
        ["inventory.reservation_failed", "order.cancelled"],
        producer="inventory",
        cause=created,
        order=order,
    )
    assert isinstance(failed.payload, InventoryReservationFailed)
    assert failed.payload.reason == "insufficient_stock"
    assert "SKU-RARE" in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.outcome, record.reason) == (
        "reserve_stock",
        StepOutcome.FAILED,
        "insufficient_stock",
    )
    assert isinstance(cancelled.payload, OrderCancelled)
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "reserve_stock",
        "insufficient_stock",
    )
    assert await reservations(harness.service) == []
    levels = await stock_levels(harness.service)
    assert (levels["SKU-RARE"], levels["SKU-APPLE"]) == (0, 1000)


async def test_an_unknown_sku_counts_as_no_stock(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    base = sample_order()
    order = base.model_copy(
        update={"items": (base.items[0].model_copy(update={"sku": "SKU-UNKNOWN"}),)}
    )
    created = harness.start_saga(order)

    await harness.publish(created)

    failed, _ = check_wire(
        harness.emitted,
        ["inventory.reservation_failed", "order.cancelled"],
        producer="inventory",
        cause=created,
        order=order,
    )
    assert failed.payload.reason == "insufficient_stock"
    assert "SKU-UNKNOWN" not in await stock_levels(harness.service)


async def test_a_partial_shortage_reserves_nothing(harness: ParticipantHarness) -> None:
    base = sample_order()
    apples = base.items[0]
    order = base.model_copy(
        update={"items": (apples, apples.model_copy(update={"sku": "SKU-RARE", "quantity": 1}))}
    )

    await harness.publish(harness.start_saga(order))

    assert harness.emitted_types == ["inventory.reservation_failed", "order.cancelled"]
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000
    assert await reservations(harness.service) == []


async def test_payment_failed_releases_the_stock_and_cancels_the_order(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.CARD_DECLINED)
    reserved = await reserve(harness, order)
    trigger = payment_failed(harness, reserved)

    await harness.publish(trigger)

    released, cancelled = check_wire(
        harness.emitted[1:],
        ["inventory.released", "order.cancelled"],
        producer="inventory",
        cause=trigger,
        order=order,
    )
    assert isinstance(released.payload, InventoryReleased)
    assert released.payload.reservation_id == reserved.payload.reservation_id
    record = released.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "reserve_stock",
        "inventory",
        StepOutcome.COMPENSATED,
    )
    assert isinstance(cancelled.payload, OrderCancelled)
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "charge_payment",
        "card_declined",
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000
    [reservation] = await reservations(harness.service)
    assert reservation.status == "released"
    assert reservation.released_at is not None


async def test_payment_refunded_releases_the_stock_and_names_the_failed_step(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.NOT_SERVED)
    reserved = await reserve(harness, order)
    trigger = payment_refunded(harness, reserved)

    await harness.publish(trigger)

    released, cancelled = check_wire(
        harness.emitted[1:],
        ["inventory.released", "order.cancelled"],
        producer="inventory",
        cause=trigger,
        order=order,
    )
    assert released.payload.reservation_id == reserved.payload.reservation_id
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == (
        "ship_order",
        "destination_not_served",
    )
    assert (await stock_levels(harness.service))["SKU-APPLE"] == 1000


async def test_stock_comes_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVENTORY_STOCK", json.dumps({"SKU-APPLE": 1, "SKU-FIG": 3}))
    service = create_service(InventorySettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        await harness.publish(harness.start_saga(sample_order()))

        assert harness.emitted_types == ["inventory.reservation_failed", "order.cancelled"]
        assert await stock_levels(service) == {"SKU-APPLE": 1, "SKU-FIG": 3}


class TestInventoryKeepsTheSagaRules(ParticipantConformance):
    spec = ORDER_SAGA
    participant = "inventory"

    def create_service(self, database_url: str) -> SagaService:
        return create_service(InventorySettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_order()

    def sample_payloads(self) -> list[EventPayload]:
        return [sample_order(), sample_order(Scenario.OUT_OF_STOCK)]

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, OrderCreated)
        return [
            start.customer.email,
            start.payment_method,
            start.shipping_address.name,
            start.shipping_address.line1,
        ]
