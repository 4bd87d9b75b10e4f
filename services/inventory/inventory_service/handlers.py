"""Inventory's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import uuid

from order_contracts import (
    ORDER_SAGA,
    InventoryReleased,
    InventoryReserved,
    OrderCreated,
)
from sagakit import BusinessFailure, Participant, Prepared, StepContext, TransientError, utc_now
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import domain
from .settings import InventorySettings
from .tables import Base, Reservation, ReservationLine, Stock

# Built once, compiled for the store's driver when it starts, run with values
# (StepContext.execute); rows come back named.
_stock = Base.metadata.tables[Stock.__tablename__]
_reservations = Base.metadata.tables[Reservation.__tablename__]
_lines = Base.metadata.tables[ReservationLine.__tablename__]
_AVAILABLE = Prepared(select(_stock.c.available).where(_stock.c.sku == bindparam("w_sku")))
# Conditional decrement: a concurrent replica cannot take the same units.
_TAKE = Prepared(
    update(_stock)
    .where(_stock.c.sku == bindparam("w_sku"), _stock.c.available >= bindparam("w_quantity"))
    .values(available=_stock.c.available - bindparam("w_quantity"))
)
_PUT_BACK = Prepared(
    update(_stock)
    .where(_stock.c.sku == bindparam("w_sku"))
    .values(available=_stock.c.available + bindparam("w_quantity"))
)
_RESERVE = Prepared(insert(_reservations))
_RESERVE_LINE = Prepared(insert(_lines))
_RESERVED_LINES = Prepared(
    select(_lines.c.sku, _lines.c.quantity)
    .where(_lines.c.reservation_id == bindparam("w_reservation_id"))
    .order_by(_lines.c.sku)
)
_RELEASE = Prepared(
    update(_reservations)
    .where(_reservations.c.saga_id == bindparam("w_saga_id"))
    .values(status=bindparam("status"), released_at=bindparam("released_at"))
)


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
        available = {}
        for sku in requested:
            found = (await step.execute(_AVAILABLE, {"w_sku": sku})).scalar_one_or_none()
            if found is not None:
                available[sku] = int(found)
        shortages = domain.find_shortages(requested, available)
        if shortages:
            raise BusinessFailure("insufficient_stock", detail="; ".join(map(str, shortages)))
        # SKUs in one order everywhere (here and in release_stock), so that two transactions
        # touching the same SKUs lock their rows in the same order and cannot deadlock.
        for sku, quantity in sorted(requested.items()):
            taken = await step.execute(_TAKE, {"w_sku": sku, "w_quantity": quantity})
            if taken.rowcount != 1:
                raise TransientError(f"stock of {sku} changed while reserving")
        reservation_id = str(uuid.uuid4())
        await step.execute(
            _RESERVE,
            {
                "saga_id": str(step.saga_id),
                "reservation_id": reservation_id,
                "order_id": order.order_id,
                "status": domain.ACTIVE,
                "created_at": utc_now(),
            },
        )
        for sku, quantity in requested.items():
            await step.execute(
                _RESERVE_LINE,
                {"reservation_id": reservation_id, "sku": sku, "quantity": quantity},
            )
        return InventoryReserved(order=order, reservation_id=reservation_id)

    @inventory.on_compensation("reserve_stock")
    async def release_stock(reserved: InventoryReserved, step: StepContext) -> InventoryReleased:
        # sagakit runs this once, and only for a reservation this step made: ``reserved``
        # is what reserve_stock returned.
        lines = await step.execute(_RESERVED_LINES, {"w_reservation_id": reserved.reservation_id})
        for line in lines:
            await step.execute(_PUT_BACK, {"w_sku": line.sku, "w_quantity": line.quantity})
        await step.execute(
            _RELEASE,
            {"w_saga_id": str(step.saga_id), "status": domain.RELEASED, "released_at": utc_now()},
        )
        return InventoryReleased(order=reserved.order, reservation_id=reserved.reservation_id)

    return inventory
