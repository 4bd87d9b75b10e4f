"""A wrong password and a wrong virtual host say so, with exit code 4: the CLI and a service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.brokers import fresh_broker_url

pytestmark = pytest.mark.integration


def _command(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    assert found, f"{name} is not installed"
    return found


def _with(url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    parts = urlsplit(url)
    if password is not None:
        netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5672}"
        parts = parts._replace(netloc=netloc)
    if vhost is not None:
        parts = parts._replace(path="/" + vhost)
    return urlunsplit(parts)


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_wrong_password_is_named_as_such(rabbitmq_url: str) -> None:
    result = _run(_command("saga"), "order", "--url", _with(rabbitmq_url, password="wrong-pw"))
    assert result.returncode == 4, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "wrong user name or password" in line
    assert "wrong-pw" not in line
    assert "rabbitmq-server -detached" not in line


def test_a_wrong_vhost_is_named_as_such(rabbitmq_url: str) -> None:
    result = _run(_command("saga"), "order", "--url", _with(rabbitmq_url, vhost="no-such-vhost"))
    assert result.returncode == 4, result.stderr
    assert "would not open virtual host 'no-such-vhost'" in result.stderr
    assert "InvalidFrameError" not in result.stderr


def test_a_service_refused_by_the_broker_says_why_in_two_lines(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    env = {
        "INVENTORY_RABBITMQ_URL": _with(rabbitmq_url, password="wrong-pw"),
        "INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/inventory.db",
    }
    result = _run(
        _command("faststream"), "run", "inventory_service.main:create_app", "--factory", env=env
    )
    assert result.returncode == 4, result.stderr[-2000:]
    assert "inventory: the broker at" in result.stderr
    assert "wrong user name or password" in result.stderr
    assert "Traceback" not in result.stderr
    assert "wrong-pw" not in result.stderr


def test_order_wait_with_nothing_bound_says_so_at_once() -> None:
    with fresh_broker_url() as empty:
        began = time.monotonic()
        result = _run(_command("saga"), "order", "--wait", "--url", empty)
        took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert "nothing is bound to 'order.created'" in result.stderr
    assert "start the services" in result.stderr
    assert took < 25  # not the 30 s wait for a saga nobody handles
