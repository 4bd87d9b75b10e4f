"""The e2e tier: a real RabbitMQ, each service as its own process.

Each test module gets the order system on a virtual host and databases of its own, so
modules cannot see each other's messages or state.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope, EventPayload
from sagakit.client import EventWatch, SagaClient
from sagakit.testing import ServiceProcesses
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import fresh_broker_url

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")


class OrderSystem:
    """The four participants as processes, a client watching every event, and their stores."""

    def __init__(
        self,
        procs: ServiceProcesses,
        client: SagaClient,
        watch: EventWatch,
        databases: Mapping[str, str],
    ) -> None:
        self.procs = procs
        self.client = client
        self.watch = watch
        self.databases = dict(databases)

    async def run(
        self, order: EventPayload | Scenario = Scenario.FULFILLED, *, timeout: float = 30.0
    ) -> list[Envelope[Any]]:
        """Start one saga and wait for its terminal event; its events in arrival order."""
        payload = sample_order(order) if isinstance(order, Scenario) else order
        started = await self.client.start(payload)
        return await self.watch.wait_for_end(started.context.saga_id, timeout=timeout)

    async def rows(self, service: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a query on one service's own database."""
        engine = create_async_engine(self.databases[service])
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(sql), params)
                return [dict(row) for row in result.mappings()]
        finally:
            await engine.dispose()

    async def stock(self, sku: str) -> int:
        [row] = await self.rows(
            "inventory", "SELECT available FROM stock WHERE sku = :sku", sku=sku
        )
        return int(row["available"])


def event_types(events: list[Envelope[Any]]) -> list[str]:
    """Event types in arrival order, each event once: a copy published again (at-least-once
    publishing) has the same id, and every consumer drops it."""
    seen: set[uuid.UUID] = set()
    unique = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event.event_type)
    return unique


def sqlite_databases(directory: Path) -> dict[str, str]:
    return {name: f"sqlite+aiosqlite:///{directory}/{name}.db" for name in PARTICIPANTS}


def service_processes(
    url: str,
    log_dir: Path,
    databases: Mapping[str, str],
    *,
    replicas: int = 1,
    env: Mapping[str, str] | None = None,
    service_env: Mapping[str, Mapping[str, str]] | None = None,
) -> ServiceProcesses:
    """The participants as processes (``replicas`` of each), on ``databases``."""
    services: dict[str, tuple[str, str]] = {}
    per_service: dict[str, dict[str, str]] = {}
    for participant in PARTICIPANTS:
        for replica in range(1, replicas + 1):
            name = participant if replicas == 1 else f"{participant}-{replica}"
            services[name] = (participant, f"{participant}_service.main:create_app")
            per_service[name] = {
                f"{participant.upper()}_DATABASE_URL": databases[participant],
                **(service_env or {}).get(name, {}),
            }
    return ServiceProcesses(
        services,
        spec=ORDER_SAGA,
        url=url,
        log_dir=log_dir,
        env=dict(env or {}),
        service_env=per_service,
        grace=5.0,
    )


@pytest.fixture(scope="module")
def module_broker_url() -> Iterator[str]:
    with fresh_broker_url() as url:
        yield url


@contextlib.asynccontextmanager
async def running_order_system(url: str, directory: Path) -> AsyncIterator[OrderSystem]:
    """The order system at ``url`` on SQLite stores in ``directory``, until the block ends."""
    databases = sqlite_databases(directory)
    async with (
        service_processes(url, directory, databases) as procs,
        SagaClient(url, ORDER_SAGA, producer="e2e-test") as client,
        client.watch() as watch,
    ):
        await procs.start(timeout=90)
        yield OrderSystem(procs, client, watch, databases)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def order_system(
    module_broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OrderSystem]:
    """The order system on SQLite stores, started once for the module."""
    async with running_order_system(
        module_broker_url, tmp_path_factory.mktemp("order-system")
    ) as system:
        yield system


def new_id() -> str:
    return f"ord-{uuid.uuid4().hex[:10]}"


SystemFactory = Callable[..., Any]
