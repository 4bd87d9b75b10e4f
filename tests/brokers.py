"""The brokers the tests use, and throwaway virtual hosts on them.

Two kinds of broker, never mixed up:

- **the shared broker**, where tests only ever work inside virtual hosts they create and
  delete: ``RABBITMQ_URL`` when set (its first node), else a local broker on 5672, else a
  private node (when ``rabbitmq-server`` is installed), else a testcontainers RabbitMQ. Its
  virtual hosts are made through its management HTTP API when that answers and lets the
  URL's user create them, else with ``rabbitmqctl add_vhost`` / ``delete_vhost`` when the
  broker is a local one (the only ``rabbitmqctl`` calls the tests make without ``-n``, and
  only after an AMQP connection to the new virtual host proved ``rabbitmqctl`` reached
  that very broker). When neither works the tests that need the broker are skipped (fail
  with ``CI=true``) instead of running in a virtual host another run may have left full.
- **a private node** (``sagakit_lab.RabbitNode``: own name, free ports, temporary data),
  for tests that restart, stop or reconfigure a broker (users, definitions). One per test
  session, started on first use and stopped when the session ends.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest
from sagakit.broker import broker_urls, redacted
from sagakit_lab import RabbitNode, rabbitmq_missing

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
VHOST_PREFIX = "sagakit-test-"

T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI (``CI`` set), where a broker tier must run."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def call(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, whatever loop runs here."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


def answers(host: str, port: int) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def with_vhost(url: str, vhost: str) -> str:
    """``url`` on virtual host ``vhost``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def _credentials(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


async def _amqp_reaches(url: str) -> bool:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


# -- ways to make a virtual host ----------------------------------------------------------


class _ManagementApi:
    """The broker's management HTTP API, as the AMQP URL's user."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base.rstrip("/")
        self.user = user
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    @classmethod
    def of(cls, url: str) -> _ManagementApi | None:
        """The API of the broker at ``url`` when it answers and lets its user make vhosts."""
        parts = urlsplit(url)
        base = os.environ.get("RABBITMQ_MANAGEMENT_URL")
        if not base:
            secure = parts.scheme == "amqps"
            port = 15671 if secure else 15672
            host = parts.hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            base = f"{'https' if secure else 'http'}://{host}:{port}"
        api_parts = urlsplit(base)
        if not answers(api_parts.hostname or "127.0.0.1", api_parts.port or 80):
            return None
        api = cls(base, *_credentials(url))
        try:
            tags = api._request("GET", "/api/whoami").get("tags", "")
        except (OSError, ValueError):
            return None
        tags = tags if isinstance(tags, list) else str(tags).split(",")
        return api if "administrator" in tags else None

    def create(self, vhost: str) -> None:
        self._request("PUT", f"/api/vhosts/{quote(vhost, safe='')}", {})
        grant = {"configure": ".*", "write": ".*", "read": ".*"}
        path = f"/api/permissions/{quote(vhost, safe='')}/{quote(self.user, safe='')}"
        self._request("PUT", path, grant)

    def delete(self, vhost: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._request("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": self._authorization, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
        return json.loads(payload) if payload else {}


class _LocalRabbitmqctl:
    """``rabbitmqctl`` without ``-n``: the default node, for a broker on this machine."""

    def __init__(self, executable: str, user: str) -> None:
        self.executable = executable
        self.user = user

    @classmethod
    def of(cls, url: str) -> _LocalRabbitmqctl | None:
        executable = shutil.which("rabbitmqctl")
        if executable is None or urlsplit(url).hostname not in LOCAL_HOSTS:
            return None
        return cls(executable, _credentials(url)[0])

    def create(self, vhost: str) -> None:
        self._ctl("add_vhost", vhost)
        self._ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def delete(self, vhost: str) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._ctl("delete_vhost", vhost)

    def _ctl(self, *args: str) -> None:
        subprocess.run([self.executable, "-q", *args], check=True, capture_output=True, timeout=120)


class _PrivateNodeVhosts:
    def __init__(self, node: RabbitNode) -> None:
        self.node = node

    def create(self, vhost: str) -> None:
        self.node.add_vhost(vhost)

    def delete(self, vhost: str) -> None:
        with contextlib.suppress(Exception):
            self.node.ctl("delete_vhost", vhost)


@contextlib.contextmanager
def throwaway_vhost(url: str, *, private: RabbitNode | None = None) -> Iterator[str]:
    """``url`` on a new virtual host of its own, deleted afterwards.

    Skips (fails in CI) when no way to make one works at ``url``'s broker.
    """
    vhost = f"{VHOST_PREFIX}{uuid.uuid4().hex[:8]}"
    tried: list[str] = []
    makers: list[Any] = []
    if private is not None:
        makers.append(_PrivateNodeVhosts(private))  # never the machine's node for it
    else:
        api = _ManagementApi.of(url)
        if api is None:
            tried.append("no management API answers there and lets its user make virtual hosts")
        ctl = _LocalRabbitmqctl.of(url)
        if ctl is None:
            tried.append(
                "rabbitmqctl is not installed"
                if shutil.which("rabbitmqctl") is None
                else "rabbitmqctl serves only a broker on this machine"
            )
        makers += [maker for maker in (api, ctl) if maker is not None]
    for maker in makers:
        try:
            maker.create(vhost)
        except (OSError, ValueError, subprocess.SubprocessError, RuntimeError) as exc:
            tried.append(f"{type(maker).__name__} failed: {exc}")
            continue
        fresh = with_vhost(url, vhost)
        if not call(functools.partial(_amqp_reaches, fresh)):
            # rabbitmqctl reached another node than the URL's broker: leave no trace there.
            maker.delete(vhost)
            tried.append(f"the virtual host {type(maker).__name__} made is not at that broker")
            continue
        try:
            yield fresh
        finally:
            maker.delete(vhost)
        return
    unavailable(
        f"cannot make a throwaway virtual host at {redacted(url)} ({'; '.join(tried)}). "
        "The broker tests never run in a virtual host an earlier run may have filled: "
        "enable the management plugin there (a user with the administrator tag; "
        "RABBITMQ_MANAGEMENT_URL if not on port 15672), or use a broker on this machine."
    )


# -- the private node of the session ------------------------------------------------------

_PRIVATE: RabbitNode | None = None


def private_node() -> RabbitNode:
    """This session's private RabbitMQ node, started on first use, stopped at exit.

    Skips (fails in CI) when ``rabbitmq-server`` is not installed.
    """
    global _PRIVATE
    if _PRIVATE is None:
        reason = rabbitmq_missing()
        if reason is not None:
            unavailable(f"this test needs a private RabbitMQ node of its own: {reason}")
        directory = tempfile.mkdtemp(prefix="sagakit-test-rabbit-")
        node = RabbitNode(directory)
        atexit.register(shutil.rmtree, directory, True)
        atexit.register(node.stop)
        node.start()
        _PRIVATE = node
    elif not _PRIVATE.running:
        _PRIVATE.start()  # a test stopped it and failed before starting it again
    return _PRIVATE


def stop_private_node() -> None:
    """Stop the session's private node, if one was started."""
    if _PRIVATE is not None:
        _PRIVATE.stop()


# -- the shared broker --------------------------------------------------------------------


@contextlib.contextmanager
def fresh_broker_url() -> Iterator[str]:
    """The shared broker, on a virtual host of its own (deleted afterwards)."""
    given = os.environ.get("RABBITMQ_URL")
    if given:
        # A cluster's URL names several nodes: the tests use the first.
        with throwaway_vhost(broker_urls(given)[0]) as url:
            yield url
        return
    if answers("127.0.0.1", 5672):
        with throwaway_vhost(LOCAL_URL) as url:
            yield url
        return
    if rabbitmq_missing() is None:
        node = private_node()
        with throwaway_vhost(node.url, private=node) as url:
            yield url
        return
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management")
        container.start()
    except Exception as exc:
        unavailable(
            "no RabbitMQ: set RABBITMQ_URL, start a local broker, install rabbitmq-server, "
            f"or a Docker engine ({exc})"
        )
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"  # the container is this session's own
    finally:
        container.stop()
