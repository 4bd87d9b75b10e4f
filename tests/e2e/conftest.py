"""The e2e tier: a real RabbitMQ, each service as its own process.

The broker comes from ``RABBITMQ_URL``, else a local broker on 5672, else a testcontainers
RabbitMQ when a Docker engine answers. With ``CI=true`` a missing broker fails the run
instead of skipping it. On a local broker each session gets a throwaway virtual host, so
tests never see the demo's queues (or another run's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

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


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A broker URL on a virtual host of this session's own."""
    url = os.environ.get("RABBITMQ_URL")
    if url:
        yield url
        return
    if _answers("127.0.0.1", 5672):
        rabbitmqctl = shutil.which("rabbitmqctl")
        if rabbitmqctl is None:
            yield LOCAL_URL
            return
        vhost = f"sagakit-e2e-{uuid.uuid4().hex[:8]}"
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
