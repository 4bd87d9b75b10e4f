"""Configuration errors print a line or two naming the setting and the fix, with an exit code
per kind; the traceback only with LOG_LEVEL=DEBUG / --debug."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from inventory_service.settings import InventorySettings
from pydantic import ValidationError
from sagakit import BrokerRefused, BrokerUnavailable, SpecError
from sagakit.cli import error_line
from sagakit.observability._startup import startup_error


def _command(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    assert found, f"{name} is not installed"
    return found


def _run(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTORY_", "LOG_"))}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**clean, **env}, check=False
    )


def test_a_bad_setting_names_its_variable_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_PREFETCH", "abc")
    with pytest.raises(ValidationError) as raised:
        InventorySettings()
    text, code = startup_error(raised.value) or ("", 0)
    assert code == 2
    assert "INVENTORY_PREFETCH: Input should be a valid integer" in text
    assert "fix or unset INVENTORY_PREFETCH" in text


def test_an_http_broker_url_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INVENTORY_RABBITMQ_URL", "http://user:secret@127.0.0.1:5672/")
    with pytest.raises(ValidationError) as raised:
        InventorySettings()
    text, code = startup_error(raised.value) or ("", 0)
    assert code == 2
    assert "INVENTORY_RABBITMQ_URL" in text
    assert "not an amqp:// or amqps:// URL" in text
    assert "secret" not in text


def test_a_port_in_use_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_HEALTH_PORT", "8091")
    InventorySettings()
    error = OSError(
        errno.EADDRINUSE,
        "error while attempting to bind on address ('0.0.0.0', 8091): address already in use",
    )
    text, code = startup_error(error) or ("", 0)
    assert code == 5
    assert "INVENTORY_HEALTH_PORT=8091 is already in use" in text


def test_unknown_errors_keep_their_traceback() -> None:
    assert startup_error(ZeroDivisionError("x")) is None


def test_the_cli_exit_codes_differ_by_kind() -> None:
    assert error_line(BrokerUnavailable("no RabbitMQ broker answered at x"))[1] == 3
    assert error_line(BrokerRefused("the broker refused user 'guest'"))[1] == 4
    assert error_line(SpecError("set SAGA_SPEC"))[1] == 2


def test_a_service_with_a_bad_setting_prints_two_lines_not_a_traceback(tmp_path: Path) -> None:
    env = {"INVENTORY_PREFETCH": "abc", "INVENTORY_DATABASE_URL": f"sqlite:///{tmp_path}/i.db"}
    faststream = _command("faststream")
    result = _run(faststream, "run", "inventory_service.main:create_app", "--factory", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 3, lines
    assert "INVENTORY_PREFETCH" in result.stderr
    assert "Traceback" not in result.stderr

    debug = _run(
        faststream,
        "run",
        "inventory_service.main:create_app",
        "--factory",
        env={**env, "LOG_LEVEL": "DEBUG"},
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert len(debug.stderr.splitlines()) > 10


def test_the_saga_command_refuses_an_http_url_in_one_line() -> None:
    result = _run(_command("saga"), "order", "--url", "http://127.0.0.1:5672/", env={})
    assert result.returncode == 2
    assert result.stderr.strip() == "Not an amqp:// or amqps:// URL: 'http://127.0.0.1:5672/'"
    debug = _run(_command("saga"), "--debug", "order", "--url", "http://127.0.0.1:5672/", env={})
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
