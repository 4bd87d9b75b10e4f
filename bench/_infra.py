"""Throwaway broker virtual hosts and PostgreSQL databases for one benchmark run."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit


def _rabbitmqctl(*args: str, check: bool = True) -> str:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise RuntimeError("rabbitmqctl is not on PATH: the benchmark needs a local RabbitMQ")
    done = subprocess.run(
        [executable, "-q", *args], check=check, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def rabbitmq_version() -> str:
    """The local broker's version, as rabbitmqctl reports it."""
    try:
        return _rabbitmqctl("version")
    except (RuntimeError, subprocess.SubprocessError):
        return "unknown"


def broker_pid() -> int | None:
    """The operating system process id of the local broker (the node rabbitmqctl talks to)."""
    try:
        status = _rabbitmqctl("status")
    except (RuntimeError, subprocess.SubprocessError):
        return None
    for line in status.splitlines():
        if line.strip().startswith("OS PID:"):
            return int(line.split(":", 1)[1])
    return None


@contextlib.contextmanager
def throwaway_vhost(base_url: str, label: str) -> Iterator[str]:
    """A virtual host of its own for ``base_url``'s user; deleted, with its queues, after."""
    parts = urlsplit(base_url)
    vhost = f"saga-bench-{label}-{uuid.uuid4().hex[:6]}"
    user = unquote(parts.username or "guest")
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost, check=False)


@contextlib.asynccontextmanager
async def throwaway_databases(
    admin_url: str, names: Iterable[str]
) -> AsyncIterator[dict[str, str]]:
    """Fresh PostgreSQL databases, one per name, as SQLAlchemy async URLs; dropped after."""
    import asyncpg  # type: ignore[import-untyped]

    suffix = uuid.uuid4().hex[:6]
    created: dict[str, str] = {}
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        for name in names:
            database = f"saga_bench_{name}_{suffix}"
            await connection.execute(f'CREATE DATABASE "{database}"')
            created[name] = database
        yield {name: f"{base}/{database}" for name, database in created.items()}
    finally:
        for database in created.values():
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.close()


async def postgres_version(admin_url: str) -> str:
    """The server's version string."""
    import asyncpg

    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
