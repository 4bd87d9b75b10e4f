"""Inventory's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import uuid

from order_contracts import (
    ORDER_SAGA,
    InventoryReleased,
    InventoryReserved,
    OrderCreated,
    OrderEvent,
)
from sagakit import Participant, StepContext, StepFailed, TransientError, utc_now
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import domain
from .settings import InventorySettings
from .tables import Base, Reservation, ReservationLine, Stock


def create_participant(settings: InventorySettings) -> Participant:
    """The inventory participant: reserves stock, releases it on the backward path."""

    async def seed_stock(session: AsyncSession) -> None:
        known = set((await session.execute(select(Stock.sku))).scalars())
        session.add_all(
            Stock(sku=sku, available=qty) for sku, qty in settings.stock.items() if sku not in known
        )

    inventory = Participant(
        "inventory", spec=ORDER_SAGA, tables=Base.metadata, initialize=seed_stock
    )

    @inventory.on_step("reserve_stock")
    async def reserve_stock(order: OrderCreated, step: StepContext) -> InventoryReserved:
        requested = domain.requested_quantities((line.sku, line.quantity) for line in order.items)
        rows = await step.session.execute(select(Stock).where(Stock.sku.in_(requested)))
        available = {stock.sku: stock.available for stock in rows.scalars()}
        shortages = domain.find_shortages(requested, available)
        if shortages:
            raise StepFailed("insufficient_stock", detail="; ".join(map(str, shortages)))
        # SKUs in one order everywhere (here and in release_stock), so that two transactions
        # touching the same SKUs lock their rows in the same order and cannot deadlock.
        for sku, quantity in sorted(requested.items()):
            # Conditional decrement: a concurrent replica cannot take the same units.
            result = await step.session.execute(
                update(Stock)
                .where(Stock.sku == sku, Stock.available >= quantity)
                .values(available=Stock.available - quantity)
            )
            if getattr(result, "rowcount", 0) != 1:
                raise TransientError(f"stock of {sku} changed while reserving")
        reservation_id = str(uuid.uuid4())
        step.session.add(
            Reservation(
                saga_id=str(step.saga_id),
                reservation_id=reservation_id,
                order_id=order.order_id,
                status=domain.ACTIVE,
                created_at=utc_now(),
            )
        )
        step.session.add_all(
            ReservationLine(reservation_id=reservation_id, sku=sku, quantity=quantity)
            for sku, quantity in requested.items()
        )
        return InventoryReserved(order=order, reservation_id=reservation_id)

    @inventory.on_compensation("reserve_stock")
    async def release_stock(event: OrderEvent, step: StepContext) -> InventoryReleased:
        reservation = (
            await step.session.execute(
                select(Reservation).where(Reservation.saga_id == str(step.saga_id))
            )
        ).scalar_one_or_none()
        if reservation is None or reservation.status == domain.RELEASED:
            return InventoryReleased(order=event.order, reservation_id=None)
        lines = await step.session.execute(
            select(ReservationLine)
            .where(ReservationLine.reservation_id == reservation.reservation_id)
            .order_by(ReservationLine.sku)
        )
        for line in lines.scalars():
            await step.session.execute(
                update(Stock)
                .where(Stock.sku == line.sku)
                .values(available=Stock.available + line.quantity)
            )
        reservation.status = domain.RELEASED
        reservation.released_at = utc_now()
        return InventoryReleased(order=event.order, reservation_id=reservation.reservation_id)

    return inventory
