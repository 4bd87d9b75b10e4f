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
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import pytest
from sagakit.broker import broker_urls, redacted, with_vhost
from sagakit.broker._vhosts import LocalRabbitmqctl, ManagementApi
from sagakit.broker._vhosts import _reaches as reaches
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


# -- ways to make a virtual host ----------------------------------------------------------


def _delete(maker: Any, vhost: str) -> None:
    # A test's clean-up never fails the test: a vhost left behind is only litter.
    with contextlib.suppress(Exception):
        maker.delete(vhost)


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
        # The same ways the demo makes its own (sagakit.broker), each saying why it did not work.
        makers += [
            maker
            for maker in (ManagementApi.of(url, tried), LocalRabbitmqctl.of(url, tried))
            if maker is not None
        ]
    for maker in makers:
        try:
            maker.create(vhost)
        except (OSError, ValueError, subprocess.SubprocessError, RuntimeError) as exc:
            tried.append(f"{type(maker).__name__} failed: {exc}")
            continue
        fresh = with_vhost(url, vhost)
        if not call(functools.partial(reaches, fresh)):
            # rabbitmqctl reached another node than the URL's broker: leave no trace there.
            _delete(maker, vhost)
            tried.append(f"the virtual host {type(maker).__name__} made is not at that broker")
            continue
        try:
            yield fresh
        finally:
            _delete(maker, vhost)
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
