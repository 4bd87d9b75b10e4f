"""Fixtures every tier may use: a RabbitMQ URL on a throwaway virtual host, and throwaway
PostgreSQL databases.

The broker comes from ``RABBITMQ_URL``, else a local broker on 5672, else a testcontainers
RabbitMQ when a Docker engine answers. With ``CI=true`` a missing broker or database fails
the run instead of skipping it. On a local broker each session gets a virtual host of its
own, so tests never see the demo's queues (or another run's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "SAGAKIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _run(coro_factory: Callable[[], object]) -> None:
    # A worker thread has no running loop, whatever pytest-asyncio is doing in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(coro_factory())).result()  # type: ignore[arg-type]


async def _admin(statement: str) -> None:
    import asyncpg

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
        _run(lambda name=name: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: object, postgres_database: Callable[[], str]
) -> str:
    """The same test on the embedded SQLite store and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store.db"
    return postgres_database()


LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@contextlib.contextmanager
def fresh_broker_url() -> Iterator[str]:
    """A broker URL on a virtual host of its own (deleted afterwards) where that is possible."""
    url = os.environ.get("RABBITMQ_URL")
    if url:
        yield url
        return
    if _answers("127.0.0.1", 5672):
        rabbitmqctl = shutil.which("rabbitmqctl")
        if rabbitmqctl is None:
            yield LOCAL_URL
            return
        vhost = f"sagakit-test-{uuid.uuid4().hex[:8]}"
        subprocess.run([rabbitmqctl, "-q", "add_vhost", vhost], check=True)
        subprocess.run(
            [rabbitmqctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
        )
        try:
            yield _with_vhost(LOCAL_URL, vhost)
        finally:
            subprocess.run([rabbitmqctl, "-q", "delete_vhost", vhost], check=False)
        return
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management")
        container.start()
    except Exception as exc:
        message = f"no RabbitMQ: set RABBITMQ_URL, start a local broker, or a Docker engine ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"
    finally:
        container.stop()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A broker URL on a virtual host of this session's own."""
    with fresh_broker_url() as url:
        yield url
