"""Shipping's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import uuid

from order_contracts import (
    ORDER_SAGA,
    PaymentProcessed,
    ShipmentCancelled,
    ShipmentCreated,
)
from sagakit import BusinessFailure, Participant, Prepared, StepContext, utc_now
from sqlalchemy import bindparam, insert, update

from . import domain
from .settings import ShippingSettings
from .tables import Base, Shipment

# Built once, compiled when the store starts, run with values (StepContext.execute).
_shipments = Base.metadata.tables[Shipment.__tablename__]
_BOOK = Prepared(insert(_shipments))
_CANCEL = Prepared(
    update(_shipments)
    .where(_shipments.c.saga_id == bindparam("w_saga_id"))
    .values(status=bindparam("status"), cancelled_at=bindparam("cancelled_at"))
)


def create_participant(settings: ShippingSettings) -> Participant:
    """The shipping participant: books a shipment, cancels it on the backward path."""
    shipping = Participant("shipping", spec=ORDER_SAGA, tables=Base.metadata)
    served_countries = frozenset(settings.served_countries)

    @shipping.on_step("ship_order")
    async def ship_order(event: PaymentProcessed, step: StepContext) -> ShipmentCreated:
        order = event.order
        country = order.shipping_address.country
        if not domain.is_served(country, served_countries):
            raise BusinessFailure(
                domain.DESTINATION_NOT_SERVED, detail=f"no shipments to country {country}"
            )
        shipment_id = uuid.uuid4()
        tracking_number = domain.tracking_number(shipment_id)
        await step.execute(
            _BOOK,
            {
                "saga_id": str(step.saga_id),
                "shipment_id": str(shipment_id),
                "order_id": order.order_id,
                "tracking_number": tracking_number,
                "country": country,
                "status": domain.BOOKED,
                "created_at": utc_now(),
            },
        )
        return ShipmentCreated(
            order=order, shipment_id=str(shipment_id), tracking_number=tracking_number
        )

    @shipping.on_compensation("ship_order")
    async def cancel_shipment(booked: ShipmentCreated, step: StepContext) -> ShipmentCancelled:
        # sagakit runs this once, and only for a shipment this step booked: ``booked`` is
        # what ship_order returned.
        await step.execute(
            _CANCEL,
            {"w_saga_id": str(step.saga_id), "status": domain.CANCELLED, "cancelled_at": utc_now()},
        )
        return ShipmentCancelled(order=booked.order, shipment_id=booked.shipment_id)

    return shipping
