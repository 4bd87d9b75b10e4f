"""Health and metrics endpoints of a real service, on the real broker and PostgreSQL.

The service reaches RabbitMQ and PostgreSQL through TCP relays owned by the test, so the
test can take either away (and bring it back) under a running service and watch
``/readyz`` follow, while ``/livez`` keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from inventory_service.handlers import create_participant
from inventory_service.settings import InventorySettings
from order_contracts import ORDER_SAGA
from order_contracts.samples import sample_order
from prometheus_client.parser import text_string_to_metric_families
from sagakit import SagaService, build_service
from sagakit.client import SagaClient


class TcpRelay:
    """Forwards connections from a local port to ``target``; ``cut()`` drops them all."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop accepting and close every relayed connection, as if the host vanished."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, upstream_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update({writer, upstream_writer})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = (
        f"{parts.username}:{parts.password}@"
        if parts.password
        else (f"{parts.username}@" if parts.username else "")
    )
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def eventually(
    probe: Callable[[], object], expected: object, *, timeout: float = 20.0
) -> object:
    give_up_at = time.monotonic() + timeout
    while True:
        got = await probe()  # type: ignore[misc]
        if got == expected or time.monotonic() > give_up_at:
            return got
        await asyncio.sleep(0.2)


def sample(metrics: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


@contextlib.asynccontextmanager
async def running(service: SagaService) -> AsyncIterator[SagaService]:
    await service.app.start()
    try:
        yield service
    finally:
        await service.app.stop()


@pytest.fixture
async def relays(rabbitmq_url: str) -> AsyncIterator[tuple[TcpRelay, TcpRelay]]:
    broker = urlsplit(rabbitmq_url)
    rabbit = TcpRelay(broker.hostname or "127.0.0.1", broker.port or 5672)
    postgres = TcpRelay("127.0.0.1", 5432)
    await rabbit.open()
    await postgres.open()
    yield rabbit, postgres
    await rabbit.cut()
    await postgres.cut()


async def test_readiness_follows_the_broker_and_the_store(
    rabbitmq_url: str,
    postgres_database: Callable[[], str],
    relays: tuple[TcpRelay, TcpRelay],
) -> None:
    rabbit, postgres = relays
    port = _free_port()
    settings = InventorySettings(
        rabbitmq_url=_via(rabbitmq_url, rabbit.port),
        database_url=_via(postgres_database(), postgres.port),
        health_port=port,
        metrics_port=port,
    )
    service = build_service(create_participant(settings), settings, configure_logs=False)

    async def ready() -> tuple[int, dict[str, bool]]:
        status, body = await get(port, "/readyz")
        return status, json.loads(body)

    def report(*, broker: bool, store: bool) -> dict[str, bool]:
        # No delivery arrives in this test and no publish fails; but the outbox relay's
        # next pass finds the store away and trips the breaker, so consuming follows it.
        return {"broker": broker, "store": store, "consuming": store, "publishing": True}

    async with running(service):
        assert await get(port, "/livez") == (200, "ok\n")
        assert await ready() == (200, report(broker=True, store=True))

        await postgres.cut()
        assert await eventually(ready, (503, report(broker=True, store=False))) == (
            503,
            report(broker=True, store=False),
        )
        assert (await get(port, "/livez"))[0] == 200
        await postgres.open()
        assert await eventually(ready, (200, report(broker=True, store=True))) == (
            200,
            report(broker=True, store=True),
        )

        await rabbit.cut()
        assert await eventually(ready, (503, report(broker=False, store=True))) == (
            503,
            report(broker=False, store=True),
        )
        await rabbit.open()
        # aio-pika reconnects on its own, every few seconds.
        assert await eventually(ready, (200, report(broker=True, store=True)), timeout=30) == (
            200,
            report(broker=True, store=True),
        )
        assert (await get(port, "/nowhere"))[0] == 404

    with pytest.raises(ConnectionRefusedError):
        await get(port, "/livez")  # the endpoint closed with the app


async def test_metrics_count_what_the_service_consumed_and_published(
    rabbitmq_url: str, tmp_path: object
) -> None:
    health_port, metrics_port = _free_port(), _free_port()
    settings = InventorySettings(
        rabbitmq_url=rabbitmq_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db",
        health_port=health_port,
        metrics_port=metrics_port,
    )
    service = build_service(create_participant(settings), settings, configure_logs=False)
    consumed = ("sagakit_events_consumed_total", {"event_type": "order.created"})
    published = ("sagakit_events_published_total", {"event_type": "inventory.reserved"})
    outcome = (
        "sagakit_step_outcomes_total",
        {"step": "reserve_stock", "kind": "step", "outcome": "completed"},
    )
    duration = ("sagakit_step_duration_seconds_count", {"step": "reserve_stock", "kind": "step"})

    async with running(service):
        # Each port serves its own routes only.
        assert (await get(health_port, "/metrics"))[0] == 404
        assert (await get(metrics_port, "/readyz"))[0] == 404
        _, before = await get(metrics_port, "/metrics")
        assert "sagakit_outbox_backlog" in before
        async with (
            SagaClient(rabbitmq_url, ORDER_SAGA, producer="metrics-test") as client,
            client.watch() as watch,
        ):
            # The watch's queue (bound to every event) is what makes inventory.reserved
            # routable here, with no payment service running.
            assert watch.undecodable == 0
            await client.start(sample_order())

            async def reserved() -> float:
                _, text = await get(metrics_port, "/metrics")
                return sample(text, published[0], participant="inventory", **published[1])

            expected = sample(before, published[0], participant="inventory", **published[1]) + 1
            assert await eventually(reserved, expected) == expected
        _, after = await get(metrics_port, "/metrics")

    for name, labels in (consumed, outcome, duration):
        assert sample(after, name, participant="inventory", **labels) == (
            sample(before, name, participant="inventory", **labels) + 1
        ), name
