"""Contract of the shipping participant, alone on an in-memory broker.

Run it on its own: ``uv run pytest tests/contract/test_shipping.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from order_contracts import (
    ORDER_SAGA,
    InventoryReserved,
    NotificationFailed,
    OrderCreated,
    PaymentProcessed,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentFailed,
)
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, EventPayload, SagaService, StepOutcome
from sagakit.testing import ParticipantConformance, ParticipantHarness
from shipping_service.main import create_service
from shipping_service.settings import ShippingSettings
from shipping_service.tables import Shipment
from sqlalchemy import select

WireCheck = Callable[..., list[Envelope[Any]]]


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[ParticipantHarness]:
    service = create_service(ShippingSettings(database_url=database_url))
    async with ParticipantHarness(service) as running:
        yield running


async def shipments(service: SagaService) -> list[Shipment]:
    async with service.store.read() as session:
        return list((await session.execute(select(Shipment))).scalars())


def in_country(country: str) -> OrderCreated:
    order = sample_order()
    address = order.shipping_address.model_copy(update={"country": country})
    return order.model_copy(update={"shipping_address": address})


def processed_event(
    harness: ParticipantHarness, order: OrderCreated, *, deadline: datetime | None = None
) -> Envelope[Any]:
    """payment.processed for a new saga of ``order``, as payment would emit it."""
    created = harness.start_saga(order, deadline=deadline)
    reserved = harness.event_after(
        created,
        InventoryReserved(order=order, reservation_id="res-1"),
        producer="inventory",
        step="reserve_stock",
    )
    return harness.event_after(
        reserved,
        PaymentProcessed(order=order, payment_id="pay-1", amount=order.total(), currency="EUR"),
        producer="payment",
        step="charge_payment",
    )


async def ship(harness: ParticipantHarness, order: OrderCreated) -> Envelope[Any]:
    """Publish payment.processed for ``order``; return the shipment.created it produced."""
    await harness.publish(processed_event(harness, order))
    assert harness.emitted_types[-1] == "shipment.created"
    return harness.emitted[-1]


def notification_failed(harness: ParticipantHarness, created: Envelope[Any]) -> Envelope[Any]:
    """notification.failed after ``created``, as notification would emit it."""
    return harness.event_after(
        created,
        NotificationFailed(order=created.payload.order, reason="contact_unreachable"),
        producer="notification",
        step="confirm_order",
        outcome=StepOutcome.FAILED,
        reason="contact_unreachable",
    )


@pytest.mark.parametrize("country", ["DE", "GB", "US", "CA"])
async def test_payment_processed_books_a_shipment(
    harness: ParticipantHarness, check_wire: WireCheck, country: str
) -> None:
    order = in_country(country)
    processed = processed_event(harness, order)

    await harness.publish(processed)

    [created] = check_wire(
        harness.emitted, ["shipment.created"], producer="shipping", cause=processed, order=order
    )
    assert isinstance(created.payload, ShipmentCreated)
    assert created.payload.shipment_id
    assert created.payload.tracking_number.startswith("SK")
    record = created.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "ship_order",
        "shipping",
        StepOutcome.COMPLETED,
    )
    [shipment] = await shipments(harness.service)
    assert shipment.saga_id == str(processed.context.saga_id)
    assert shipment.shipment_id == created.payload.shipment_id
    assert shipment.tracking_number == created.payload.tracking_number
    assert (shipment.order_id, shipment.country, shipment.status) == (
        order.order_id,
        country,
        "booked",
    )
    assert shipment.cancelled_at is None


async def test_each_shipment_gets_its_own_tracking_number(harness: ParticipantHarness) -> None:
    first = await ship(harness, sample_order())
    second = await ship(harness, sample_order())

    assert first.payload.tracking_number != second.payload.tracking_number
    assert len(await shipments(harness.service)) == 2


@pytest.mark.parametrize("country", ["AQ", "JP"])
async def test_a_destination_not_served_fails_the_step(
    harness: ParticipantHarness, check_wire: WireCheck, country: str
) -> None:
    order = in_country(country)
    processed = processed_event(harness, order)

    await harness.publish(processed)

    [failed] = check_wire(
        harness.emitted, ["shipment.failed"], producer="shipping", cause=processed, order=order
    )
    assert isinstance(failed.payload, ShipmentFailed)
    assert failed.payload.reason == "destination_not_served"
    assert country in failed.payload.detail
    record = failed.context.steps[-1]
    assert (record.step, record.participant, record.outcome, record.reason) == (
        "ship_order",
        "shipping",
        StepOutcome.FAILED,
        "destination_not_served",
    )
    assert await shipments(harness.service) == []


async def test_the_sample_not_served_order_fails(harness: ParticipantHarness) -> None:
    await harness.publish(processed_event(harness, sample_order(Scenario.NOT_SERVED)))

    assert harness.emitted_types == ["shipment.failed"]
    assert harness.emitted[0].payload.reason == "destination_not_served"


async def test_notification_failed_cancels_the_shipment(
    harness: ParticipantHarness, check_wire: WireCheck
) -> None:
    order = sample_order(Scenario.UNREACHABLE)
    created = await ship(harness, order)
    backward = notification_failed(harness, created)

    await harness.publish(backward)

    [cancelled] = check_wire(
        harness.emitted[1:],
        ["shipment.cancelled"],
        producer="shipping",
        cause=backward,
        order=order,
    )
    assert isinstance(cancelled.payload, ShipmentCancelled)
    assert cancelled.payload.shipment_id == created.payload.shipment_id
    record = cancelled.context.steps[-1]
    assert (record.step, record.participant, record.outcome) == (
        "ship_order",
        "shipping",
        StepOutcome.COMPENSATED,
    )
    [shipment] = await shipments(harness.service)
    assert shipment.status == "cancelled"
    assert shipment.cancelled_at is not None


async def test_served_countries_come_from_settings(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPPING_SERVED_COUNTRIES", json.dumps(["aq", "JP"]))
    service = create_service(ShippingSettings(database_url=database_url))
    async with ParticipantHarness(service) as harness:
        for country in ("AQ", "JP", "DE"):
            await harness.publish(processed_event(harness, in_country(country)))

        assert harness.emitted_types == ["shipment.created", "shipment.created", "shipment.failed"]


class TestShippingKeepsTheSagaRules(ParticipantConformance):
    spec = ORDER_SAGA
    participant = "shipping"

    def create_service(self, database_url: str) -> SagaService:
        return create_service(ShippingSettings(database_url=database_url))

    def start_payload(self) -> EventPayload:
        return sample_order()

    def sample_payloads(self) -> list[EventPayload]:
        return [sample_order(), sample_order(Scenario.NOT_SERVED)]

    def personal_data(self, start: EventPayload) -> list[str]:
        assert isinstance(start, OrderCreated)
        address = start.shipping_address
        return [
            start.customer.email,
            start.payment_method,
            address.name,
            address.line1,
            address.postal_code,
        ]
