"""What a service prints when it cannot start because of its configuration.

A service started by ``faststream run`` that meets a bad setting, a broker that refuses it
or a port in use would print a traceback of a hundred lines or more with the reason on the
last one. Its settings install this hook instead: the error becomes one or two lines that
name the setting and the fix, and the process exits with a code per kind (2 a bad setting,
3 no broker answers, 4 the broker refuses the login or virtual host, 5 a port in use).
Anything else, and everything when ``LOG_LEVEL``/``<PREFIX>LOG_LEVEL`` is ``DEBUG``, goes
to the hook that was there before (the full traceback).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import unquote, urlsplit

import aiormq
from pydantic import ValidationError

from sagakit._exceptions import BrokerRefused, BrokerUnavailable, BrokerUrlError
from sagakit.broker._urls import redacted

EXIT_SETTING = 2
EXIT_BROKER_UNAVAILABLE = 3
EXIT_BROKER_REFUSED = 4
EXIT_IN_USE = 5


@dataclass(frozen=True, slots=True)
class _Service:
    name: str
    prefix: str
    broker_url: str
    ports: dict[int, str]
    database_url: str = ""


_service: _Service | None = None
_services: dict[str, _Service] = {}
_previous_hook = sys.excepthook


def describe_settings_error(error: ValidationError, *, prefix: str) -> str:
    """A settings error as lines that name each variable (never its value)."""
    lines = []
    for problem in error.errors()[:3]:
        location = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        if location:
            variable = f"{prefix}{location.upper()}"
            lines.append(f"{variable}: {message}; fix or unset {variable}")
        else:
            lines.append(message)
    return "\n".join(lines)


def watch_startup(
    *, name: str, prefix: str, broker_url: str, ports: dict[int, str], database_url: str = ""
) -> None:
    """Make configuration errors of service ``name`` print short (idempotent)."""
    global _service, _previous_hook
    _service = _Service(
        name=name,
        prefix=prefix,
        broker_url=broker_url,
        ports=dict(ports),
        database_url=database_url,
    )
    if broker_url:
        _services[name] = _service
    if sys.excepthook is not _hook:
        _previous_hook = sys.excepthook
        sys.excepthook = _hook


def startup_error(error: BaseException) -> tuple[str, int] | None:
    """The short text and exit code for ``error``, or None when it is not a known kind."""
    service = _service
    prefix = service.prefix if service else ""
    name = service.name if service else "service"
    for one in _leaves(error):
        if isinstance(one, ValidationError):
            return f"{name}: cannot start:\n{describe_settings_error(one, prefix=prefix)}", 2
        if isinstance(one, BrokerUrlError):
            return f"{name}: {prefix}RABBITMQ_URL: {one}", EXIT_SETTING
        if isinstance(one, BrokerRefused):
            return f"{name}: {one}", EXIT_BROKER_REFUSED
        if service is not None and isinstance(one, aiormq.exceptions.AMQPError):
            from sagakit.client._client import refusal_of

            refusal = refusal_of(one, service.broker_url)
            if refusal is not None:
                return f"{name}: {refusal}", EXIT_BROKER_REFUSED
        if isinstance(one, OSError) and one.errno == errno.EADDRINUSE:
            found = re.search(r"(\d+)\)?:? ?address already in use", str(one)) or re.search(
                r"', (\d+)\)", str(one)
            )
            port = int(found.group(1)) if found else None
            setting = service.ports.get(port) if service and port else None
            where = f"{prefix}{setting}={port}" if setting else f"port {port}"
            return (
                f"{name}: {where} is already in use by another process: choose a free port "
                f"({prefix}HEALTH_PORT, {prefix}METRICS_PORT) or stop what holds it",
                EXIT_IN_USE,
            )
        if isinstance(one, BrokerUnavailable | ConnectionError | aiormq.exceptions.AMQPError):
            where = redacted(service.broker_url) if service else "the broker URL"
            return (
                f"{name}: no RabbitMQ broker answered at {where} ({type(one).__name__}: {one}); "
                f"start one or point {prefix}RABBITMQ_URL / RABBITMQ_URL at one",
                EXIT_BROKER_UNAVAILABLE,
            )
    return None


def where_line(name: str) -> str | None:
    """What service ``name`` uses: broker host, virtual host and user (never the password),
    and its database; None when its settings were not read in this process."""
    service = _services.get(name)
    if service is None:
        return None
    parts = urlsplit(service.broker_url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    host = f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
    user = unquote(parts.username or "guest")
    return (
        f"{name} uses broker {parts.scheme}://{host} virtual host {vhost!r} as user {user!r}; "
        f"database {describe_database(service.database_url)}"
    )


def describe_database(url: str) -> str:
    """A database URL for people: the absolute file of SQLite, else the URL without password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {os.path.abspath(parsed.database or '')}"
    return parsed.render_as_string(hide_password=True)


def _leaves(error: BaseException) -> list[BaseException]:
    # anyio task groups wrap a startup failure in exception groups; the cause may be chained.
    found: list[BaseException] = []
    pending = [error]
    while pending:
        one = pending.pop(0)
        if isinstance(one, BaseExceptionGroup):
            pending.extend(one.exceptions)
            continue
        found.append(one)
        if one.__cause__ is not None:
            pending.append(one.__cause__)
    return found


def _debugging() -> bool:
    prefix = _service.prefix if _service else ""
    levels = (os.environ.get("LOG_LEVEL", ""), os.environ.get(f"{prefix}LOG_LEVEL", ""))
    return any(level.strip().upper() == "DEBUG" for level in levels)


def _hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    short = None if _debugging() else startup_error(error)
    if short is None:
        _previous_hook(kind, error, traceback)
        return
    text, code = short
    print(f"{text}\n(the traceback: LOG_LEVEL=DEBUG)", file=sys.stderr, flush=True)
    # The hook runs as the interpreter exits with code 1: only _exit sets ours.
    sys.stderr.flush()
    os._exit(code)
