"""Fixtures every tier may use: a RabbitMQ URL on a throwaway virtual host, a private
RabbitMQ node for tests that restart or reconfigure a broker, and throwaway PostgreSQL
databases.

The shared broker comes from ``RABBITMQ_URL``, else a local broker on 5672, else a private
node, else a testcontainers RabbitMQ; tests only work there inside virtual hosts they create
and delete (tests/brokers.py says how). With ``CI=true`` a missing broker or database fails
the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sagakit_lab import RabbitNode

from tests.brokers import LOCAL_URL, fresh_broker_url, private_node, stop_private_node

__all__ = ["LOCAL_URL", "fresh_broker_url"]

POSTGRES_ADMIN_URL = os.environ.get(
    "SAGAKIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _run(coro_factory: Callable[[], object]) -> None:
    # A worker thread has no running loop, whatever pytest-asyncio is doing in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(coro_factory())).result()  # type: ignore[arg-type]


async def _admin(statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Callable[[], str]]:
    """A factory of fresh PostgreSQL databases, as SQLAlchemy async URLs; all dropped after."""
    created: list[str] = []

    def create() -> str:
        name = f"sagakit_test_{uuid.uuid4().hex[:10]}"
        try:
            _run(lambda: _admin(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
        created.append(name)
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        return f"{base}/{name}"

    yield create
    for name in created:
        _run(functools.partial(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: object, postgres_database: Callable[[], str]
) -> str:
    """The same test on the embedded SQLite store and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store.db"
    return postgres_database()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The shared broker, on a virtual host of this session's own (see tests/brokers.py)."""
    with fresh_broker_url() as url:
        yield url


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this session's own, for tests that restart or reconfigure a broker.

    Free ports, data in a temporary directory, its own node name and cookie: never the
    broker a developer runs. Skipped (failed in CI) without ``rabbitmq-server``.
    """
    yield private_node()
    stop_private_node()
