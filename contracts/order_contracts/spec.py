"""The order-fulfilment choreography, written down once as data."""

from __future__ import annotations

from sagakit import ReactionSpec, SagaSpec, StepSpec

from .events import ALL_EVENTS

ORDER_SAGA = SagaSpec(
    saga_type="order_fulfilment",
    exchange="orders",
    start_event="order.created",
    completed_event="order.fulfilled",
    cancelled_event="order.cancelled",
    start_field="order",
    business_key="order_id",
    steps=(
        StepSpec(
            name="reserve_stock",
            participant="inventory",
            trigger="order.created",
            success="inventory.reserved",
            failure="inventory.reservation_failed",
            compensated="inventory.released",
        ),
        StepSpec(
            name="charge_payment",
            participant="payment",
            trigger="inventory.reserved",
            success="payment.processed",
            failure="payment.failed",
            compensated="payment.refunded",
        ),
        StepSpec(
            name="ship_order",
            participant="shipping",
            trigger="payment.processed",
            success="shipment.created",
            failure="shipment.failed",
            compensated="shipment.cancelled",
        ),
        StepSpec(
            name="confirm_order",
            participant="notification",
            trigger="shipment.created",
            success="order.fulfilled",
            failure="notification.failed",
        ),
    ),
    reactions=(
        ReactionSpec(
            name="send_cancellation_notice",
            participant="notification",
            trigger="order.cancelled",
        ),
    ),
    events={event.event_type: event for event in ALL_EVENTS},
)
"""The reference flow: reserve stock, charge, ship, confirm; undone in reverse on failure."""
