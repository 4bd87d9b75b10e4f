"""The console's pages on a tracker store holding many sagas: how long each takes.

    uv run python bench/console_bench.py                     # 100,000 sagas, SQLite
    uv run python bench/console_bench.py --sagas 20000 --db postgresql+asyncpg://…/db

The store is filled directly (rows as the tracker writes them, computed by its own
``summarize``): 100,000 order sagas over the last two days, most fulfilled, some cancelled
at each step, some still running, a few stuck. Then each page is requested through the
console's ASGI app (no network, no browser: the server's time, query plus rendering),
``--runs`` times, and the median and the worst are printed with the query time the page
itself shows. The machine is shared: read the spread, not one figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from order_contracts import ORDER_SAGA
from sagakit.console import ConsoleSettings, SagaFilter, console_app, saga_page
from sagakit.tracker import TrackedEvent, TrackerStore
from sqlalchemy import text

FORWARD = [
    ("order.created", "client", None),
    ("inventory.reserved", "inventory", None),
    ("payment.processed", "payment", None),
    ("shipment.created", "shipping", None),
    ("order.fulfilled", "notification", None),
]
# Where a cancelled saga failed, its reason, and the events of its backward path.
CANCELLED = [
    ("inventory.reservation_failed", 1, "insufficient_stock", ["order.cancelled"]),
    ("payment.failed", 2, "card_declined", ["inventory.released", "order.cancelled"]),
    (
        "shipment.failed",
        3,
        "destination_not_served",
        ["payment.refunded", "inventory.released", "order.cancelled"],
    ),
    (
        "notification.failed",
        4,
        "contact_unreachable",
        ["shipment.cancelled", "payment.refunded", "inventory.released", "order.cancelled"],
    ),
]
FAILED_STEP = {1: "reserve_stock", 2: "charge_payment", 3: "ship_order", 4: "confirm_order"}
PRODUCER = {
    "inventory.released": "inventory",
    "payment.refunded": "payment",
    "shipment.cancelled": "shipping",
    "order.cancelled": "inventory",
    "inventory.reservation_failed": "inventory",
    "payment.failed": "payment",
    "shipment.failed": "shipping",
    "notification.failed": "notification",
}


def _body(event_type: str, saga_id: str, event_id: str, order_id: str, at: datetime) -> bytes:
    order = {
        "order_id": order_id,
        "customer": {"customer_id": "c-1", "email": "someone@example.org"},
        "items": [{"sku": "SKU-APPLE", "quantity": 1, "unit_price": "1.00"}],
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "country": "DE"},
        "payment_method": {"token": "tok_visa"},
    }
    payload: dict[str, Any] = order if event_type == "order.created" else {"order": order}
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": at.isoformat(),
            "producer": "x",
            "context": {"saga_id": saga_id, "saga_type": ORDER_SAGA.saga_type},
            "payload": payload,
        }
    ).encode()


def _saga(rng: random.Random, number: int, now: datetime) -> list[TrackedEvent]:
    saga_id = str(uuid.UUID(int=rng.getrandbits(128)))
    order_id = f"ord-{number:07d}"
    started = now - timedelta(seconds=rng.uniform(0, 2 * 86400))
    roll = rng.random()
    chain: list[tuple[str, str, str | None, str | None]] = []
    if roll < 0.68:
        chain = [(t, p, None, None) for t, p, _ in FORWARD]
    elif roll < 0.92:
        failure, index, cause, back = rng.choice(CANCELLED)
        chain = [(t, p, None, None) for t, p, _ in FORWARD[:index]]
        chain.append((failure, PRODUCER[failure], cause, None))
        for event in back:
            last = event == "order.cancelled"
            ends = (cause, FAILED_STEP[index]) if last else (None, None)
            chain.append((event, PRODUCER[event], *ends))
    elif roll < 0.96:  # still running, or stuck
        chain = [(t, p, None, None) for t, p, _ in FORWARD[: rng.randint(1, 4)]]
    else:  # being undone (or stuck undoing): a failure seen, its compensation not yet
        failure, index, cause, _ = rng.choice(CANCELLED[1:])
        chain = [(t, p, None, None) for t, p, _ in FORWARD[:index]]
        chain.append((failure, PRODUCER[failure], cause, None))
    events = []
    at = started
    previous: str | None = None
    for event_type, producer, reason, failed_step in chain:
        event_id = str(uuid.UUID(int=rng.getrandbits(128)))
        events.append(
            TrackedEvent(
                event_id=event_id,
                event_type=event_type,
                producer=producer,
                occurred_at=at,
                saga_id=saga_id,
                saga_type=ORDER_SAGA.saga_type,
                reason=reason,
                failed_step=failed_step,
                trace_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                causation_id=previous,
                business_key=order_id,
                body=_body(event_type, saga_id, event_id, order_id, at),
                headers={"x-saga-id": saga_id},
            )
        )
        previous = event_id
        at += timedelta(milliseconds=rng.uniform(20, 400))
    return events


async def fill(store: TrackerStore, sagas: int, *, seed: int = 7) -> list[tuple[str, str]]:
    """Write ``sagas`` sagas into ``store``; returns some (saga id, order id) to look up."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    samples: list[tuple[str, str]] = []
    batch: list[list[TrackedEvent]] = []
    for number in range(sagas):
        events = _saga(rng, number, now)
        batch.append(events)
        if number % 997 == 0:
            samples.append((events[0].saga_id, events[0].business_key or ""))
        if len(batch) >= 2000:
            await store.import_sagas(batch)
            batch.clear()
    await store.import_sagas(batch)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--db", help="tracker database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite+aiosqlite:///{Path(tmp) / 'tracker.db'}"
        store = TrackerStore(url, spec=ORDER_SAGA)
        await store.create_schema()
        began = time.perf_counter()
        samples = await fill(store, args.sagas)
        took = time.perf_counter() - began
        # Planner statistics, as autovacuum (PostgreSQL) or an operator's ANALYZE (SQLite)
        # would have them for a store that grew over days rather than in a minute.
        async with store.store.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        print(f"filled {args.sagas} sagas in {took:.1f}s ({url.split(':')[0]})")
        app = console_app(store, ConsoleSettings(broker_url="amqp://127.0.0.1:1/"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            first = await client.get("/sagas")
            cursor_link = first.text.split('href="/sagas?after=', 1)[-1].split('"', 1)[0]
            pages = {
                "list, newest 50": "/sagas",
                "list, live refresh (partial)": "/sagas?partial=1",
                "list, page 2 (cursor)": f"/sagas?after={cursor_link}".replace("&amp;", "&"),
                "list, state=compensating": "/sagas?state=compensating",
                "list, stuck only": "/sagas?stuck=1",
                "list, reason=card_declined": "/sagas?reason=card_declined",
                "list, current step=ship_order": "/sagas?step=ship_order",
                "list, started < 1 h ago": "/sagas?age=lt1h",
                "search, order id": f"/sagas?q={samples[len(samples) // 2][1]}",
                "search, saga id prefix": f"/sagas?q={samples[len(samples) // 3][0][:6]}",
                "saga page": f"/sagas/{samples[len(samples) // 4][0]}",
            }
            counted = []
            for _ in range(args.runs):
                page = await saga_page(store, SagaFilter(), stuck_after=timedelta(seconds=60))
                counted.append(page.facets_ms)
            print(
                f"filter choices (counts by reason and step): median "
                f"{statistics.median(counted):.1f} ms, worst {max(counted):.1f} ms"
            )
            print(f"{'page':34} {'median ms':>10} {'max ms':>8} {'query ms':>9}  rows")
            for name, path in pages.items():
                times = []
                shown = ""
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                    if 'id="query-ms">' in response.text:
                        shown = response.text.split('id="query-ms">', 1)[1].split("<", 1)[0]
                rows = response.text.count('<tr class="state-')
                print(
                    f"{name:34} {statistics.median(times):10.1f} {max(times):8.1f} "
                    f"{shown or '-':>9}  {rows}"
                )
        await store.dispose()


if __name__ == "__main__":
    asyncio.run(main())
