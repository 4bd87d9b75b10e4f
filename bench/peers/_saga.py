"""What every peer's saga shares: orders, business rules, tables and the check of its rows.

The orders are the benchmark's own (``order_contracts.samples.sample_order``) flattened to
plain JSON, so that every peer gets the same inputs as sagakit's services; the rules are
the reference services' defaults, reduced to what decides each outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypedDict

import sqlalchemy as sa
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order


class Order(TypedDict):
    """A saga's input, as every peer receives it (JSON-serializable)."""

    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    payment_method: str
    country: str
    email: str


@dataclass(frozen=True)
class Step:
    """One saga step: its table, what its row says, what its compensation's row says."""

    name: str
    table: str
    action: str
    undo: str | None


STEPS = (
    Step("reserve_stock", "reservations", "reserve", "release"),
    Step("charge_payment", "payments", "charge", "refund"),
    Step("ship_order", "shipments", "ship", "cancel"),
    # The last step: nothing can fail after it, so it has nothing to undo.
    Step("confirm_order", "confirmations", "confirm", None),
)
STEP_BY_NAME = {step.name: step for step in STEPS}
FULFILLED = "fulfilled"

# The reference services' defaults (services/*/settings.py), as far as the mix needs them.
STOCK = {"SKU-APPLE": 10**9, "SKU-PEAR": 10**9, "SKU-PLUM": 10**9, "SKU-RARE": 0}
APPROVED_TOKENS = frozenset({"tok_visa", "tok_mastercard"})
ORDER_LIMIT_CENTS = 500_000
SERVED_COUNTRIES = frozenset({"DE", "FR", "NL", "BE", "GB", "IE", "ES", "IT", "US", "CA"})
UNREACHABLE_SUFFIX = ".invalid"


class BusinessFailure(Exception):
    """A step refused the order: the saga compensates, nothing is retried."""


def cancelled(step: str) -> str:
    """The outcome of a saga whose step ``step`` refused the order."""
    return f"cancelled:{step}"


def expected_outcome(scenario: Scenario) -> str:
    """What a saga started with ``scenario``'s order must end as."""
    failed = EXPECTED_FAILED_STEP[scenario]
    return FULFILLED if failed is None else cancelled(failed)


def make_order(scenario: Scenario) -> Order:
    """The benchmark's sample order for ``scenario``, flattened."""
    order = sample_order(scenario)
    line = order.items[0]
    amount = sum((item.unit_price * item.quantity for item in order.items), Decimal(0))
    return Order(
        order_id=order.order_id,
        sku=line.sku,
        quantity=sum(item.quantity for item in order.items),
        amount_cents=int(amount * 100),
        payment_method=order.payment_method,
        country=order.shipping_address.country,
        email=order.customer.email,
    )


def refusal(step: str, order: Order) -> str | None:
    """Why ``step`` refuses ``order``, or None when it goes ahead."""
    if step == "reserve_stock" and order["quantity"] > STOCK.get(order["sku"], 0):
        return f"insufficient stock of {order['sku']}"
    if step == "charge_payment":
        if order["payment_method"] not in APPROVED_TOKENS:
            return "the payment method was declined"
        if order["amount_cents"] > ORDER_LIMIT_CENTS:
            return "the order total exceeds the limit"
    if step == "ship_order" and order["country"] not in SERVED_COUNTRIES:
        return f"no shipments to {order['country']}"
    if step == "confirm_order" and order["email"].endswith(UNREACHABLE_SUFFIX):
        return "the customer cannot be reached"
    return None


def detail(step: str, order: Order) -> str:
    """What a step's row records about the order."""
    return {
        "reserve_stock": f"{order['quantity']} x {order['sku']}",
        "charge_payment": f"{order['amount_cents']} cents",
        "ship_order": order["country"],
        "confirm_order": order["email"],
    }[step]


def now_ns() -> int:
    """A row's time stamp: compensations are checked to follow each other in reverse."""
    return time.time_ns()


# -- tables ------------------------------------------------------------------------------------

METADATA = sa.MetaData()
TABLES = {
    step.name: sa.Table(
        step.table,
        METADATA,
        sa.Column("order_id", sa.String(64), primary_key=True),
        # One row per action and order: a retried write (at-least-once) cannot add a second.
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
    )
    for step in STEPS
}


def sqlite_ddl() -> list[str]:
    """``CREATE TABLE`` statements for SQLite, from the same table definitions."""
    dialect = sa.dialects.sqlite.dialect()
    return [str(sa.schema.CreateTable(table).compile(dialect=dialect)) for table in TABLES.values()]


# -- the check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One durable write of a saga step or compensation."""

    table: str
    order_id: str
    action: str
    at_ns: int


class SagaCheckFailed(AssertionError):
    """A peer's saga did not leave the rows it must."""


def check_rows(
    orders: Mapping[str, Scenario], outcomes: Mapping[str, str], rows: Iterable[Row]
) -> dict[str, int]:
    """Check every saga of ``orders`` ended as its scenario says and left exactly its rows.

    A fulfilled saga: one row in each step's table, none undone. A saga refused at step k:
    one row for each step before k, none for k and after, and one compensation row for each
    step before k, written in reverse order and after every step's row: nothing is left
    reserved, charged or shipped. Returns the number of sagas checked per outcome.
    """
    by_order: dict[str, list[Row]] = {order_id: [] for order_id in orders}
    for row in rows:
        if row.order_id in by_order:
            by_order[row.order_id].append(row)
    problems: list[str] = []
    counts: dict[str, int] = {}
    for order_id, scenario in orders.items():
        expected = expected_outcome(scenario)
        counts[expected] = counts.get(expected, 0) + 1
        got = outcomes.get(order_id)
        if got != expected:
            problems.append(f"{order_id} ({scenario}): ended {got!r}, expected {expected!r}")
            continue
        problems += [
            f"{order_id} ({scenario}): {p}" for p in _row_problems(expected, by_order[order_id])
        ]
    if problems:
        shown = "\n  ".join(problems[:20])
        raise SagaCheckFailed(f"{len(problems)} problem(s) in the peer's sagas:\n  {shown}")
    return counts


def _row_problems(expected: str, rows: Sequence[Row]) -> list[str]:
    failed_at = len(STEPS) if expected == FULFILLED else _index(expected.split(":", 1)[1])
    done = STEPS[:failed_at]
    want = {(step.table, step.action) for step in done}
    want |= {(step.table, step.undo) for step in done if expected != FULFILLED and step.undo}
    have = [(row.table, row.action) for row in rows]
    problems = []
    if sorted(have) != sorted(want):
        problems.append(f"rows {sorted(have)}, expected {sorted(want)}")
        return problems
    if expected == FULFILLED:
        return problems
    at = {(row.table, row.action): row.at_ns for row in rows}
    forward = [at[(step.table, step.action)] for step in done]
    backward = [at[(step.table, step.undo)] for step in reversed(done) if step.undo]
    if forward != sorted(forward):
        problems.append("steps not written in order")
    if backward != sorted(backward):
        problems.append("compensations not written in reverse order of the steps")
    if backward and forward and min(backward) < max(forward):
        problems.append("a compensation was written before a step it follows")
    return problems


def _index(step: str) -> int:
    return next(i for i, s in enumerate(STEPS) if s.name == step)


# -- names the peers' processes and the benchmark share ------------------------------------------

DBOS_APP_NAME = "saga-bench-peer"
DBOS_QUEUE = "order_sagas"
DBOS_WORKFLOW = "order_saga"
