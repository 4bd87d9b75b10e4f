"""Every event of the order-fulfilment saga.

Past tense; each compensation mirrors its step (``inventory.reserved`` ↔
``inventory.released``). Every event after ``order.created`` carries the order as created
(``order``), so that each participant has what it needs without calling another service.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from sagakit import CancelledEvent, CompensatedEvent, EventPayload, FailureEvent

from ._money import CountryCode, CurrencyCode, Money


class Customer(BaseModel):
    """Who ordered. ``email`` is personal data: never log it or put it on a span."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=100)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")


class OrderLine(BaseModel):
    """One SKU of an order."""

    model_config = ConfigDict(frozen=True)

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10_000)
    unit_price: Money


class ShippingAddress(BaseModel):
    """Where to ship. Personal data: never log it or put it on a span."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: CountryCode


class Order(BaseModel):
    """The order as the client created it."""

    model_config = ConfigDict(frozen=True)

    order_id: str = Field(min_length=1, max_length=100)
    customer: Customer
    items: tuple[OrderLine, ...] = Field(min_length=1, max_length=100)
    currency: CurrencyCode
    payment_method: str = Field(min_length=1, max_length=100, description="a payment token")
    shipping_address: ShippingAddress

    def total(self) -> Decimal:
        """Sum of quantity times unit price over all lines."""
        return sum((line.unit_price * line.quantity for line in self.items), Decimal("0.00"))


class OrderCreated(Order, EventPayload):
    """A client asks for an order to be fulfilled: the saga starts."""

    event_type: ClassVar[str] = "order.created"


class OrderEvent(EventPayload):
    """Base of every event after ``order.created``."""

    order: Order


class StepFailure(FailureEvent, OrderEvent):
    """Base of the failure events: a reason code and a human explanation (sagakit fills)."""


class InventoryReserved(OrderEvent):
    """Stock for every line is set aside."""

    event_type: ClassVar[str] = "inventory.reserved"
    reservation_id: str


class InventoryReservationFailed(StepFailure):
    """Stock could not be reserved (``insufficient_stock``)."""

    event_type: ClassVar[str] = "inventory.reservation_failed"


class InventoryReleased(CompensatedEvent, OrderEvent):
    """Compensation of ``inventory.reserved``: the reserved stock is available again."""

    event_type: ClassVar[str] = "inventory.released"
    reservation_id: str | None = None


class PaymentProcessed(OrderEvent):
    """The customer was charged."""

    event_type: ClassVar[str] = "payment.processed"
    payment_id: str
    amount: Money
    currency: CurrencyCode


class PaymentFailed(StepFailure):
    """The charge was refused (``card_declined``, ``limit_exceeded``)."""

    event_type: ClassVar[str] = "payment.failed"


class PaymentRefunded(CompensatedEvent, OrderEvent):
    """Compensation of ``payment.processed``: the charge was refunded."""

    event_type: ClassVar[str] = "payment.refunded"
    payment_id: str | None = None
    amount: Money | None = None


class ShipmentCreated(OrderEvent):
    """A shipment was booked."""

    event_type: ClassVar[str] = "shipment.created"
    shipment_id: str
    tracking_number: str


class ShipmentFailed(StepFailure):
    """The order cannot be shipped (``destination_not_served``)."""

    event_type: ClassVar[str] = "shipment.failed"


class ShipmentCancelled(CompensatedEvent, OrderEvent):
    """Compensation of ``shipment.created``: the shipment was cancelled."""

    event_type: ClassVar[str] = "shipment.cancelled"
    shipment_id: str | None = None


class OrderFulfilled(OrderEvent):
    """Terminal: the customer was told the order is on its way."""

    event_type: ClassVar[str] = "order.fulfilled"
    notification_id: str


class NotificationFailed(StepFailure):
    """The customer could not be told (``contact_unreachable``)."""

    event_type: ClassVar[str] = "notification.failed"


class OrderCancelled(CancelledEvent, OrderEvent):
    """Terminal: every completed step was undone. Names the step that failed and why."""

    event_type: ClassVar[str] = "order.cancelled"


ALL_EVENTS: tuple[type[EventPayload], ...] = (
    OrderCreated,
    InventoryReserved,
    InventoryReservationFailed,
    InventoryReleased,
    PaymentProcessed,
    PaymentFailed,
    PaymentRefunded,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentCancelled,
    OrderFulfilled,
    NotificationFailed,
    OrderCancelled,
)
