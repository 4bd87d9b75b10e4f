"""The console in a real browser: headless Chromium (Debian's) driven by Playwright, against
the tracker as its own process, fed by the order system running sagas on the real broker.

What an operator does: finds sagas in the list, finds one by its order id, reads why a
cancelled saga ended, replays a parked message from the dead-letter page so that its saga
ends, and cancels a stalled saga so that it is undone. Each page's screenshot is saved; with
``SAGAKIT_UPDATE_SCREENSHOTS=1`` they replace the ones in docs/console/ (the README shows
them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from playwright.async_api import Browser, Page, async_playwright, expect
from sagakit.client import DeadLetters, EventWatch, SagaClient
from sagakit.testing import QueueProbe, ServiceProcesses, ServiceStartError, consumed_queues
from sagakit.tracker import TRACKER_QUEUE

from .conftest import event_types, service_processes, sqlite_databases

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
# The services, the tracker and the browser share two cores with the rest of the suite: an
# assertion on a page waits up to 15 s for the page to show it (5 s by default).
expect.set_options(timeout=15_000)

CHROMIUM = Path("/usr/bin/chromium")
TRACED = SpanContext(
    trace_id=uuid.uuid4().int,
    span_id=uuid.uuid4().int >> 64,
    is_remote=False,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
TOKEN = f"op-{uuid.uuid4().hex}"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
# Inventory dies in the middle of undoing a reservation after a declined card, as a service
# with a fatal bug would: the broker dead-letters the message, and that saga stands still.
CRASH = {"SAGAKIT_CRASH_AT": "mid_compensation:payment.failed", "INVENTORY_DELIVERY_LIMIT": "1"}


@dataclass
class Console:
    procs: ServiceProcesses
    client: SagaClient
    watch: EventWatch
    base: str
    browser: Browser
    shots: Path
    sagas: dict[str, Any]

    async def page(self) -> Page:
        context = await self.browser.new_context(viewport={"width": 1500, "height": 1000})
        return await context.new_page()

    async def sign_in(self, page: Page) -> None:
        await page.goto(f"{self.base}/login")
        await page.fill("#token", TOKEN)
        await page.click("#sign-in")
        await expect(page.locator(".badge.operator")).to_be_visible()

    async def shoot(self, page: Page, name: str) -> None:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if os.environ.get("SAGAKIT_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / path.name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _tracker(url: str, directory: Path, port: int) -> AsyncIterator[None]:
    env = {
        **os.environ,
        "RABBITMQ_URL": url,
        "TRACKER_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/tracker.db",
        "TRACKER_CONSOLE_PORT": str(port),
        "TRACKER_OPERATOR_TOKEN": TOKEN,
        "TRACKER_STUCK_AFTER_SECONDS": "2",
        "TRACKER_JAEGER_URL": "http://127.0.0.1:16686",
    }
    with (directory / "tracker.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, returns at once
            [
                *(sys.executable, "-m", "faststream", "run"),
                *("tracker_service.main:create_app", "--factory"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    probe = QueueProbe(url)
    try:
        give_up_at = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert process.poll() is None, (directory / "tracker.log").read_text()[-3000:]
                assert time.monotonic() < give_up_at, "the tracker's console did not answer"
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"http://127.0.0.1:{port}/sagas")
                    if answer.status_code == 200 and await probe.consumers(TRACKER_QUEUE):
                        break
                await asyncio.sleep(0.2)
        yield
    finally:
        await probe.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(
    module_broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Console]:
    if not CHROMIUM.exists():  # noqa: ASYNC240
        message = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("console")
    shots = directory / "screenshots"
    shots.mkdir()
    url = module_broker_url
    port = _free_port()
    procs = service_processes(
        url, directory, sqlite_databases(directory), service_env={"inventory": dict(CRASH)}
    )
    async with (
        procs,
        SagaClient(url, ORDER_SAGA, producer="console-e2e") as client,
        client.watch() as watch,
        async_playwright() as playwright,
    ):
        await procs.start(timeout=90)
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        async with _tracker(url, directory, port):
            fulfilled = [await client.start(sample_order(Scenario.FULFILLED)) for _ in range(4)]
            # A saga started inside a trace: its page links the trace to Jaeger.
            with trace.use_span(NonRecordingSpan(TRACED)):
                shipped_nowhere = await client.start(sample_order(Scenario.NOT_SERVED))
            no_stock = await client.start(sample_order(Scenario.OUT_OF_STOCK))
            started = [*fulfilled, shipped_nowhere, no_stock]
            await watch.wait_all([s.context.saga_id for s in started], timeout=60)
            sagas = {
                "fulfilled": fulfilled[0],
                "shipped_nowhere": shipped_nowhere,
                "no_stock": no_stock,
            }
            try:
                yield Console(
                    procs, client, watch, f"http://127.0.0.1:{port}", browser, shots, sagas
                )
            finally:
                await browser.close()


async def test_the_list_shows_the_sagas(console: Console) -> None:
    page = await console.page()
    await page.goto(f"{console.base}/sagas")
    for saga in console.sagas.values():
        row = page.locator(f'tr[data-saga="{saga.context.saga_id}"]')
        await expect(row).to_be_visible()
        await expect(row).to_contain_text(saga.payload.order_id)
    await expect(page.locator("#query-ms")).to_have_text(re.compile(r"^\d+\.\d$"))
    await console.shoot(page, "sagas")
    # A filter by failure reason keeps only the saga that failed so. (The filter's choices
    # are counted again at most every 10 s when counting takes long: a busy machine.)
    reason = page.locator('select[name="reason"] option[value="destination_not_served"]')
    async with asyncio.timeout(30):
        while not await reason.count():
            await asyncio.sleep(1)
            await page.reload()
    await page.select_option('select[name="reason"]', "destination_not_served")
    await page.click('button[type="submit"]')
    rows = page.locator("table.sagas tbody tr[data-saga]")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text(console.sagas["shipped_nowhere"].payload.order_id)


async def test_search_finds_an_order_id(console: Console) -> None:
    saga = console.sagas["no_stock"]
    page = await console.page()
    await page.goto(f"{console.base}/sagas")
    await page.fill("#search", saga.payload.order_id)
    await page.press("#search", "Enter")
    rows = page.locator("table.sagas tbody tr[data-saga]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-saga", str(saga.context.saga_id))
    # ... and by a prefix of its saga id
    await page.fill("#search", str(saga.context.saga_id)[:8])
    await page.press("#search", "Enter")
    await expect(page.locator(f'tr[data-saga="{saga.context.saga_id}"]')).to_be_visible()


async def test_a_cancelled_sagas_page_shows_its_path_and_reasons(console: Console) -> None:
    saga = console.sagas["shipped_nowhere"]
    page = await console.page()
    await page.goto(f"{console.base}/sagas/{saga.context.saga_id}")
    await expect(page.locator("#failure")).to_contain_text("ship_order: destination_not_served")
    graph = page.locator("#graph svg")
    for reached in ("shipment.failed", "payment.refunded", "inventory.released", "order.cancelled"):
        await expect(graph.locator(f'g.node.seen[data-event="{reached}"]')).to_have_count(1)
    await expect(graph.locator('g.node.cause[data-event="shipment.failed"]')).to_have_count(1)
    await expect(graph.locator('g.node.seen[data-event="order.fulfilled"]')).to_have_count(0)
    timeline = page.locator("#timeline")
    await expect(timeline).to_contain_text("reason destination_not_served")
    await expect(timeline).to_contain_text("caused by shipment.failed")
    await expect(page.locator("#trace-link")).to_have_attribute(
        "href", f"http://127.0.0.1:16686/trace/{TRACED.trace_id:032x}"
    )
    # Personal data stays out of the page.
    payload = await page.locator("#payload").inner_text()
    assert saga.payload.customer.email not in payload
    assert saga.payload.shipping_address.line1 not in payload
    assert saga.payload.order_id in payload
    await console.shoot(page, "saga")


async def _until_parked(console: Console, dead_letters: DeadLetters) -> None:
    """Start inventory again whenever it dies (as a supervisor would) until one is parked."""
    probe = QueueProbe(console.procs.url)
    queues = ("inventory.payment.failed",)
    try:
        async with asyncio.timeout(90):
            while not await dead_letters.parked():
                if not console.procs.alive("inventory"):
                    while any((await probe.counts(queues)).values()):
                        await asyncio.sleep(0.1)
                    with contextlib.suppress(ServiceStartError):
                        await console.procs.start("inventory", timeout=60)
                await asyncio.sleep(0.2)
    finally:
        await probe.close()


async def test_a_replay_from_the_dead_letter_page_ends_a_parked_saga(console: Console) -> None:
    procs = console.procs
    declined = await console.client.start(sample_order(Scenario.CARD_DECLINED))
    saga_id = declined.context.saga_id
    async with DeadLetters(procs.url, services=["inventory"]) as dead_letters:
        await _until_parked(console, dead_letters)
    assert not console.watch.ended(saga_id)
    procs.service_env["inventory"].pop("SAGAKIT_CRASH_AT")  # the fix is deployed
    if procs.alive("inventory"):
        await procs.restart("inventory", timeout=60)
    else:
        await procs.start("inventory", timeout=60)

    page = await console.page()
    await page.goto(f"{console.base}/dead-letters")
    await expect(page.locator("#show-personal")).to_have_count(0)  # not signed in
    await console.sign_in(page)
    await page.goto(f"{console.base}/dead-letters")
    group = page.locator('section.group[data-service="inventory"][data-reason="delivery_limit"]')
    await expect(group).to_be_visible()
    await page.click('summary:has-text("headers and body")')
    body = await group.locator("tr.detail pre").nth(1).inner_text()
    assert declined.payload.customer.email not in body  # masked unless asked for
    await console.shoot(page, "dead-letters")
    await group.locator("button.replay-one").first.click()
    await expect(page.locator(".message")).to_contain_text("replay: 1 message(s) of inventory")
    events = await console.watch.wait_for_end(saga_id, timeout=60)
    assert event_types(events)[-2:] == ["inventory.released", "order.cancelled"]


async def test_cancel_on_a_stalled_saga_compensates_it(console: Console) -> None:
    procs = console.procs
    await procs.stop("shipping")
    probe = QueueProbe(procs.url)
    try:  # the broker lets go of the stopped consumers a moment later
        async with asyncio.timeout(30):
            for name in consumed_queues(ORDER_SAGA, "shipping"):
                while await probe.consumers(name):
                    await asyncio.sleep(0.1)
    finally:
        await probe.close()
    order = sample_order(Scenario.FULFILLED)
    started = await console.client.start(order)
    saga_id = started.context.saga_id
    # The event shipping waits for is lost (taken off its queue while shipping is down):
    # the saga stalls at ship_order, charged and reserved.
    connection = await aio_pika.connect(procs.url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("shipping.payment.processed", passive=True)
        async with asyncio.timeout(30):
            while (message := await queue.get(fail=False)) is None:
                await asyncio.sleep(0.1)
            await message.ack()
    finally:
        await connection.close()
    await procs.start("shipping", timeout=60)

    page = await console.page()
    await console.sign_in(page)
    await page.goto(f"{console.base}/sagas/{saga_id}")
    # The tracker records payment.processed (it may lag on a busy machine), and the saga
    # counts as stuck 2 s after it (the setting).
    current = page.locator("#current-step")
    async with asyncio.timeout(30):
        while not (
            await current.count()
            and await current.inner_text() == "ship_order"
            and await page.locator(".badge.stuck").count()
        ):
            await asyncio.sleep(0.5)
            await page.reload()
    await console.shoot(page, "saga-stalled")
    page.on("dialog", lambda dialog: dialog.accept())
    await page.click("#cancel")
    await expect(page.locator(".message")).to_contain_text("cancel: payment.processed sent to")
    events = await console.watch.wait_for_end(saga_id, timeout=60)
    assert event_types(events)[-4:] == [
        "shipment.failed",
        "payment.refunded",
        "inventory.released",
        "order.cancelled",
    ]
    assert events[-1].payload.reason == "cancelled_by_operator"
    await page.goto(f"{console.base}/sagas/{saga_id}")
    await expect(page.locator("#failure")).to_contain_text("ship_order: cancelled_by_operator")
    # Ended: no more actions, and a second cancel is refused.
    await expect(page.locator("#cancel")).to_have_count(0)
    await console.shoot(page, "saga-cancelled")
