"""The order mix of a chaos run: every outcome of the reference rules, drawn from the seed.

Orders spread over three SKUs with one or two lines each, so stock is checked per SKU; an
out-of-stock order also asks for a SKU that is in stock, so a failed reservation that took
any unit at all would show.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from order_contracts import OrderCreated
from order_contracts.events import OrderLine
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order

SKUS = ("SKU-APPLE", "SKU-PEAR", "SKU-PLUM")
UNAVAILABLE_SKU = "SKU-RARE"
INITIAL_STOCK = {**dict.fromkeys(SKUS, 1_000_000), UNAVAILABLE_SKU: 0}
PRICES = ("1.50", "2.25", "9.99", "12.00")

# The reason each refused order is cancelled with, by the reference rules.
REASONS: dict[Scenario, str] = {
    Scenario.OUT_OF_STOCK: "insufficient_stock",
    Scenario.CARD_DECLINED: "card_declined",
    Scenario.LIMIT_EXCEEDED: "limit_exceeded",
    Scenario.NOT_SERVED: "destination_not_served",
    Scenario.UNREACHABLE: "contact_unreachable",
}
# In an override: whichever step fails, so long as it fails for the reason given.
ANY_STEP = "*"

# About half the orders are fulfilled; the rest fail at every step, by real rules.
MIX: dict[Scenario, int] = {
    Scenario.FULFILLED: 50,
    Scenario.OUT_OF_STOCK: 10,
    Scenario.CARD_DECLINED: 8,
    Scenario.LIMIT_EXCEEDED: 6,
    Scenario.NOT_SERVED: 13,
    Scenario.UNREACHABLE: 13,
}


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """An order the run starts, and what the reference rules make of it.

    ``override`` is for an order that something other than the rules must refuse (one too
    large to travel the whole saga): ``(step, reason)``, where the step may be ``ANY_STEP``.
    ``may_park`` names a participant that may park its start event instead, and the reason
    it must give, ``(participant, reason)``.
    """

    scenario: Scenario
    order: OrderCreated
    override: tuple[str, str] | None = None
    may_park: tuple[str, str] | None = None

    @property
    def failed_step(self) -> str | None:
        """The step that must fail, or None for an order that is fulfilled."""
        if self.override is not None:
            return self.override[0]
        return EXPECTED_FAILED_STEP[self.scenario]

    @property
    def reason(self) -> str | None:
        """The reason it must be cancelled with, or None for an order that is fulfilled."""
        if self.override is not None:
            return self.override[1]
        return REASONS.get(self.scenario)

    @property
    def total(self) -> Decimal:
        """What the order costs."""
        return self.order.total()

    def quantities(self) -> dict[str, int]:
        """Units per SKU."""
        units: dict[str, int] = {}
        for line in self.order.items:
            units[line.sku] = units.get(line.sku, 0) + line.quantity
        return units


def _line(rng: random.Random, sku: str) -> OrderLine:
    return OrderLine.model_validate(
        {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": rng.choice(PRICES)}
    )


def plan_order(rng: random.Random, number: int) -> PlannedOrder:
    """Order ``number`` of a run: its scenario drawn from ``MIX``, its lines from ``rng``."""
    scenario = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    order = sample_order(scenario, order_id=f"chaos-{number:06d}")
    lines: tuple[OrderLine, ...]
    if scenario is Scenario.OUT_OF_STOCK:
        lines = (_line(rng, rng.choice(SKUS)), order.items[0])
    elif scenario is Scenario.LIMIT_EXCEEDED:
        # Over the payment limit whatever else is on it.
        lines = (order.items[0].model_copy(update={"sku": rng.choice(SKUS)}),)
    else:
        skus = rng.sample(SKUS, k=rng.randint(1, 2))
        lines = tuple(_line(rng, sku) for sku in skus)
    planned = OrderCreated.model_validate({**order.model_dump(), "items": lines})
    return PlannedOrder(scenario=scenario, order=planned)
