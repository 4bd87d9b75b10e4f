"""The console over a tracker store on SQLite, through its ASGI app (no broker, no browser):
filters, search, pages, the saga page's path, masking, and the guards on actions; and what
cancel and re-drive would send for a saga in each state."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from order_contracts import ORDER_SAGA
from sagakit import SagaError
from sagakit.client import Action, SteeringRefused, plan_steering
from sagakit.console import ConsoleSettings, console_app, flow_svg
from sagakit.tracker import TrackedEvent, TrackerStore
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

TOKEN = "s3cret-operator-token"
NOW = datetime.now(UTC)

FULFILLED = [
    "order.created",
    "inventory.reserved",
    "payment.processed",
    "shipment.created",
    "order.fulfilled",
]
DECLINED = [
    "order.created",
    "inventory.reserved",
    "payment.failed",
    "inventory.released",
    "order.cancelled",
]


def saga(kinds: list[str], *, order_id: str, started: datetime = NOW) -> list[TrackedEvent]:
    saga_id = str(uuid.uuid4())
    events = []
    previous = None
    for number, kind in enumerate(kinds):
        event_id = str(uuid.uuid4())
        failing = kind in {"payment.failed", "order.cancelled"}
        order = {"order_id": order_id, "customer": {"email": "ada@example.org"}}
        payload = order if kind == "order.created" else {"order": order}
        events.append(
            TrackedEvent(
                event_id=event_id,
                event_type=kind,
                producer=kind.split(".")[0],
                occurred_at=started + timedelta(milliseconds=50 * number),
                saga_id=saga_id,
                saga_type=ORDER_SAGA.saga_type,
                reason="card_declined" if failing else None,
                failed_step="charge_payment" if kind == "order.cancelled" else None,
                causation_id=previous,
                business_key=order_id,
                body=json.dumps({"event_id": event_id, "payload": payload}).encode(),
                headers={"x-saga-id": saga_id},
            )
        )
        previous = event_id
    return events


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TrackerStore]:
    tracker = TrackerStore(f"sqlite+aiosqlite:///{tmp_path}/tracker.db", spec=ORDER_SAGA)
    await tracker.create_schema()
    yield tracker
    await tracker.dispose()


def client(store: TrackerStore, token: str | None = TOKEN) -> httpx.AsyncClient:
    settings = ConsoleSettings(
        broker_url="amqp://guest:guest@127.0.0.1:1/",
        operator_token=token,
        jaeger_url="http://jaeger:16686",
    )
    transport = httpx.ASGITransport(app=console_app(store, settings))
    return httpx.AsyncClient(transport=transport, base_url="http://console")


def saga_ids(html: str) -> list[str]:
    return re.findall(r'data-saga="([0-9a-f-]{36})"', html)


async def test_the_list_filters_searches_and_pages(store: TrackerStore) -> None:
    fulfilled = [
        saga(FULFILLED, order_id=f"ord-{n}", started=NOW - timedelta(minutes=n)) for n in range(7)
    ]
    declined = saga(DECLINED, order_id="ord-declined", started=NOW - timedelta(days=2))
    running = saga(FULFILLED[:2], order_id="ord-running")
    stale = saga(FULFILLED[:3], order_id="ord-stale", started=NOW - timedelta(hours=2))
    undoing = saga(DECLINED[:3], order_id="ord-undoing", started=NOW - timedelta(hours=3))
    await store.import_sagas([*fulfilled, declined, running, stale, undoing])
    async with client(store) as http:
        everything = (await http.get("/sagas")).text
        assert len(saga_ids(everything)) == 11
        stuck = (await http.get("/sagas", params={"stuck": "1"})).text
        assert saga_ids(stuck) == [stale[0].saga_id, undoing[0].saga_id]  # newest first
        assert re.search(r'id="query-ms">\d+\.\d<', everything)
        by_state = (await http.get("/sagas", params={"state": "pending"})).text
        assert saga_ids(by_state) == [running[0].saga_id, stale[0].saga_id]
        by_reason = (await http.get("/sagas", params={"reason": "card_declined"})).text
        assert saga_ids(by_reason) == [undoing[0].saga_id, declined[0].saga_id]
        by_step = (await http.get("/sagas", params={"step": "charge_payment"})).text
        assert saga_ids(by_step) == [running[0].saga_id]
        old = (await http.get("/sagas", params={"age": "gt1d"})).text
        assert saga_ids(old) == [declined[0].saga_id]
        by_order = (await http.get("/sagas", params={"q": "ord-3"})).text
        assert saga_ids(by_order) == [fulfilled[3][0].saga_id]
        prefix = declined[0].saga_id[:6]
        by_prefix = (await http.get("/sagas", params={"q": prefix})).text
        assert declined[0].saga_id in saga_ids(by_prefix)
        assert all(found.startswith(prefix) for found in saga_ids(by_prefix))
        # pages of 4, by cursor: every saga once, newest first
        seen: list[str] = []
        app = console_app(store, ConsoleSettings(broker_url="amqp://x:1/", page_size=4))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://console"
        ) as paged:
            link: str | None = "/sagas"
            while link:
                html = (await paged.get(link)).text
                seen += saga_ids(html)
                found = re.search(r'href="(/sagas\?[^"]*after=[^"]+)" id="older"', html)
                link = found.group(1).replace("&amp;", "&") if found else None
        assert sorted(seen) == sorted(saga_ids(everything))
        assert len(seen) == 11


async def test_the_saga_page_draws_the_path_and_masks_personal_data(store: TrackerStore) -> None:
    declined = saga(DECLINED, order_id="ord-declined")
    await store.import_sagas([declined])
    async with client(store) as http:
        page = (await http.get(f"/sagas/{declined[0].saga_id}")).text
        missing = await http.get(f"/sagas/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert "charge_payment: <b>card_declined</b>" in page
    assert 'class="node failure seen cause" data-event="payment.failed"' in page
    assert 'class="node cancelled seen" data-event="order.cancelled"' in page
    assert 'class="node completed" data-event="order.fulfilled"' in page  # not reached
    assert "caused by <a" in page
    assert "ada@example.org" not in page
    assert "ord-declined" in page
    assert page.count("[redacted]") >= 1


def test_the_graph_marks_the_step_a_saga_waits_on() -> None:
    svg = flow_svg(
        ORDER_SAGA, seen={"order.created", "inventory.reserved"}, waiting="charge_payment"
    )
    assert re.search(r'class="hop forward waiting" data-step="charge_payment"', svg)
    assert re.search(r'class="hop forward taken" data-step="reserve_stock"', svg)


async def test_actions_need_an_operator_session_and_its_csrf_token(store: TrackerStore) -> None:
    declined = saga(DECLINED, order_id="ord-declined")
    await store.import_sagas([declined])
    cancel = f"/sagas/{declined[0].saga_id}/cancel"
    async with client(store, token=None) as read_only:
        assert (await read_only.post(cancel)).status_code == 403
        page = (await read_only.get(f"/sagas/{declined[0].saga_id}")).text
        assert "read-only" in page
    async with client(store) as http:
        assert (await http.post(cancel)).status_code == 403  # not signed in
        assert (await http.post("/login", data={"token": "wrong"})).status_code == 403
        signed = await http.post("/login", data={"token": TOKEN})
        assert signed.status_code == 303
        assert "httponly" in signed.headers["set-cookie"].lower()
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        assert (await http.post(cancel, data={"csrf": "forged"})).status_code == 403
        foreign = await http.post(
            cancel, data={"csrf": "x"}, headers={"origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        saga_page = (await http.get(f"/sagas/{declined[0].saga_id}")).text
        assert 'id="cancel"' not in saga_page  # it has ended: no actions
        # An ended saga: the action is refused before anything is sent.
        running = saga(FULFILLED[:2], order_id="ord-running")
        await store.import_sagas([running])
        live = (await http.get(f"/sagas/{running[0].saga_id}")).text
        value = re.search(r'name="csrf" value="([0-9a-f]+)"', live)
        assert value is not None
        refused = await http.post(cancel, data={"csrf": value.group(1)})
        assert refused.status_code == 303
        assert "refused" in refused.headers["location"]


def test_cancel_and_redrive_send_the_event_the_step_waits_for() -> None:
    running = saga(FULFILLED[:3], order_id="o")
    chosen, view = plan_steering(ORDER_SAGA, Action.CANCEL, running[0].saga_id, running)
    assert (chosen.step, chosen.participant, chosen.queue) == (
        "ship_order",
        "shipping",
        "shipping.payment.processed",
    )
    assert chosen.event.event_id == running[2].event_id
    assert view.current_step == "ship_order"
    # Being undone: a cancel is refused, a re-drive sends the compensation request again.
    undoing = saga(DECLINED[:3], order_id="o")
    with pytest.raises(SteeringRefused, match="being undone"):
        plan_steering(ORDER_SAGA, Action.CANCEL, undoing[0].saga_id, undoing)
    again, _ = plan_steering(ORDER_SAGA, Action.REDRIVE, undoing[0].saga_id, undoing)
    assert (again.step, again.queue) == ("reserve_stock", "inventory.payment.failed")
    ended = saga(DECLINED, order_id="o")
    for action in Action:
        with pytest.raises(SteeringRefused, match="ended"):
            plan_steering(ORDER_SAGA, action, ended[0].saga_id, ended)
    with pytest.raises(SagaError, match="never seen"):
        plan_steering(ORDER_SAGA, Action.REDRIVE, "nope", [])


async def test_an_older_tracker_database_gets_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE saga_tracker_sagas (saga_id VARCHAR(36) PRIMARY KEY, saga_type "
                "VARCHAR(100) NOT NULL, state VARCHAR(20) NOT NULL, started_at DATETIME NOT NULL, "
                "last_event_type VARCHAR(200) NOT NULL, last_event_at DATETIME NOT NULL, "
                "event_count INTEGER NOT NULL, deadline DATETIME, ended_at DATETIME, trace_id "
                "VARCHAR(32), failed_step VARCHAR(100), failure_reason VARCHAR(200))"
            )
        )
    await engine.dispose()
    store = TrackerStore(url, spec=ORDER_SAGA)
    try:
        await store.create_schema()
        await store.import_sagas([saga(FULFILLED, order_id="ord-old")])
        async with client(store) as http:
            assert "ord-old" in (await http.get("/sagas", params={"q": "ord-old"})).text
    finally:
        await store.dispose()


def test_saga_cancel_and_redrive_refuse_an_ended_or_unknown_saga(tmp_path: Path) -> None:
    from sagakit.cli import app, load_plugins
    from typer.testing import CliRunner

    url = f"sqlite+aiosqlite:///{tmp_path}/tracker.db"
    ended = saga(DECLINED, order_id="ord-ended")

    async def prepare() -> None:
        store = TrackerStore(url, spec=ORDER_SAGA)
        await store.create_schema()
        await store.import_sagas([ended])
        await store.dispose()

    import asyncio

    asyncio.run(prepare())
    load_plugins()
    runner = CliRunner()
    for command in ("cancel", "redrive"):
        result = runner.invoke(app, [command, ended[0].saga_id, "--db", url])
        assert result.exit_code == 1, result.output
        assert "refused" in result.output
        assert "it has ended (cancelled)" in result.output
    unknown = runner.invoke(app, ["cancel", str(uuid.uuid4()), "--db", url])
    assert unknown.exit_code == 1
    assert "never seen" in unknown.output
