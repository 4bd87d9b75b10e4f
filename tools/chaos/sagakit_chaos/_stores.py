"""What each service's own database says at the end of a chaos run."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


@dataclass
class StoreState:
    """The rows of the four services that the audit reads."""

    stock: dict[str, int]
    reservations: dict[str, str]  # saga -> status
    reserved: dict[str, dict[str, int]]  # saga -> sku -> quantity
    payments: dict[str, tuple[str, Decimal, str]]  # saga -> (payment id, amount, status)
    refunds: dict[str, list[Decimal]]  # payment id -> amounts
    shipments: dict[str, str]  # saga -> status
    notices: dict[str, list[str]]  # saga -> kinds
    pending_outbox: dict[str, int]  # service -> unsent rows
    inbox_rows: int


async def _rows(url: str, sql: str) -> list[dict[str, Any]]:
    # A busy shared server may refuse a connection for a moment ("too many clients").
    for attempt in range(1, 6):
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(sql))
                return [dict(row) for row in result.mappings()]
        except (DBAPIError, OSError):
            if attempt == 5:
                raise
        finally:
            await engine.dispose()
        await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


async def read_stores(databases: Mapping[str, str]) -> StoreState:
    """Read what the audit needs from each service's database."""
    inventory, payment = databases["inventory"], databases["payment"]
    stock = {r["sku"]: int(r["available"]) for r in await _rows(inventory, "SELECT * FROM stock")}
    reservations = {
        r["saga_id"]: r["status"]
        for r in await _rows(inventory, "SELECT saga_id, status FROM reservations")
    }
    reserved: dict[str, dict[str, int]] = {}
    lines_sql = (
        "SELECT r.saga_id, l.sku, l.quantity FROM reservations r "
        "JOIN reservation_lines l ON l.reservation_id = r.reservation_id"
    )
    for row in await _rows(inventory, lines_sql):
        reserved.setdefault(row["saga_id"], {})[row["sku"]] = int(row["quantity"])
    payments = {
        r["saga_id"]: (r["payment_id"], Decimal(str(r["amount"])), r["status"])
        for r in await _rows(payment, "SELECT saga_id, payment_id, amount, status FROM payments")
    }
    refunds: dict[str, list[Decimal]] = {}
    for row in await _rows(payment, "SELECT payment_id, amount FROM refunds"):
        refunds.setdefault(row["payment_id"], []).append(Decimal(str(row["amount"])))
    shipments = {
        r["saga_id"]: r["status"]
        for r in await _rows(databases["shipping"], "SELECT saga_id, status FROM shipments")
    }
    notices: dict[str, list[str]] = {}
    for row in await _rows(databases["notification"], "SELECT saga_id, kind FROM notices"):
        notices.setdefault(row["saga_id"], []).append(row["kind"])
    pending: dict[str, int] = {}
    inbox = 0
    for service, url in databases.items():
        [row] = await _rows(url, "SELECT count(*) AS n FROM sagakit_outbox WHERE sent_at IS NULL")
        pending[service] = int(row["n"])
        [row] = await _rows(url, "SELECT count(*) AS n FROM sagakit_inbox")
        inbox += int(row["n"])
    return StoreState(
        stock=stock,
        reservations=reservations,
        reserved=reserved,
        payments=payments,
        refunds=refunds,
        shipments=shipments,
        notices=notices,
        pending_outbox=pending,
        inbox_rows=inbox,
    )
