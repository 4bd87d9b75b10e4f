"""Ready-made orders, one per outcome of the reference rules (README: the demo's rules)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from .events import Customer, OrderCreated, OrderLine, ShippingAddress


class Scenario(StrEnum):
    """What an order is built to do under the reference data."""

    FULFILLED = "fulfilled"
    OUT_OF_STOCK = "out_of_stock"  # step 1: inventory.reservation_failed
    CARD_DECLINED = "card_declined"  # step 2: payment.failed
    LIMIT_EXCEEDED = "limit_exceeded"  # step 2: payment.failed
    NOT_SERVED = "destination_not_served"  # step 3: shipment.failed
    UNREACHABLE = "contact_unreachable"  # step 4: notification.failed


EXPECTED_FAILED_STEP: dict[Scenario, str | None] = {
    Scenario.FULFILLED: None,
    Scenario.OUT_OF_STOCK: "reserve_stock",
    Scenario.CARD_DECLINED: "charge_payment",
    Scenario.LIMIT_EXCEEDED: "charge_payment",
    Scenario.NOT_SERVED: "ship_order",
    Scenario.UNREACHABLE: "confirm_order",
}


def sample_order(
    scenario: Scenario = Scenario.FULFILLED, *, order_id: str | None = None
) -> OrderCreated:
    """An order that ends as ``scenario`` says under the default reference data."""
    sku, quantity, price = "SKU-APPLE", 2, "1.50"
    token, country, email = "tok_visa", "DE", "ada@example.com"
    if scenario is Scenario.OUT_OF_STOCK:
        sku = "SKU-RARE"
    elif scenario is Scenario.CARD_DECLINED:
        token = "tok_declined"
    elif scenario is Scenario.LIMIT_EXCEEDED:
        quantity, price = 3, "2000.00"
    elif scenario is Scenario.NOT_SERVED:
        country = "AQ"
    elif scenario is Scenario.UNREACHABLE:
        email = "ada@mailhost.invalid"
    return OrderCreated(
        order_id=order_id or f"ord-{uuid.uuid4().hex[:12]}",
        customer=Customer(id="cust-42", email=email),
        items=(OrderLine.model_validate({"sku": sku, "quantity": quantity, "unit_price": price}),),
        currency="EUR",
        payment_method=token,
        shipping_address=ShippingAddress(
            name="Ada Lovelace",
            line1="1 Analytical Way",
            city="Berlin",
            postal_code="10115",
            country=country,
        ),
    )
