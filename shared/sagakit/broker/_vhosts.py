"""Throwaway virtual hosts: a run that must not share its queues with anyone gets its own.

AMQP cannot create a virtual host. Two ways can, tried in order:

- the broker's **management HTTP API** (``rabbitmq_management``), when it answers and the
  URL's user has the ``administrator`` tag (``RABBITMQ_MANAGEMENT_URL`` when it is not on
  the broker's host at port 15672, or 15671 for ``amqps``);
- **rabbitmqctl**, for a broker on this machine, when the command is installed and may
  talk to the node (root, or the node's Erlang cookie). The virtual host is then proved to
  be at the URL's broker by an AMQP connection to it, so that a ``rabbitmqctl`` reaching
  another node leaves nothing behind and is not used.

``throwaway_vhost`` yields ``None`` when neither works, with the reasons in ``tried``: the
caller decides whether it may run on the shared virtual host instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from sagakit.broker._urls import broker_urls

MANAGEMENT_URL_ENV = "RABBITMQ_MANAGEMENT_URL"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _VhostMaker(Protocol):
    name: str

    def create(self, vhost: str) -> None: ...

    def delete(self, vhost: str) -> None: ...


@dataclass
class ThrowawayVhost:
    """Where a throwaway virtual host was made, or why none could be.

    Attributes:
        url: The broker URL on the new virtual host (None when none was made).
        vhost: The new virtual host's name.
        made_by: ``management API`` or ``rabbitmqctl``.
        tried: Why each way that failed did not work.
    """

    url: str | None = None
    vhost: str | None = None
    made_by: str | None = None
    tried: list[str] = field(default_factory=list)


def with_vhost(url: str, vhost: str) -> str:
    """``url`` (a single-host URL) on virtual host ``vhost``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def vhost_of(url: str) -> str:
    """The virtual host ``url`` names (``/`` when it names none)."""
    path = urlsplit(broker_urls(url)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _credentials(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class ManagementApi:
    """The broker's management HTTP API, as the AMQP URL's user."""

    name = "management API"

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base.rstrip("/")
        self.user = user
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    @classmethod
    def of(cls, url: str, tried: list[str]) -> ManagementApi | None:
        """The API of the broker at ``url`` if it answers and lets its user make vhosts."""
        parts = urlsplit(url)
        base = os.environ.get(MANAGEMENT_URL_ENV)
        if not base:
            secure = parts.scheme == "amqps"
            host = parts.hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            base = f"{'https' if secure else 'http'}://{host}:{15671 if secure else 15672}"
        api_parts = urlsplit(base)
        if not _answers(api_parts.hostname or "127.0.0.1", api_parts.port or 80):
            tried.append(f"no management API answers at {base} (rabbitmq_management)")
            return None
        api = cls(base, *_credentials(url))
        try:
            tags = api._request("GET", "/api/whoami").get("tags", "")
        except (OSError, ValueError) as exc:
            tried.append(f"the management API at {base} refused: {exc}")
            return None
        tags = tags if isinstance(tags, list) else str(tags).split(",")
        if "administrator" not in tags:
            tried.append(f"user {api.user!r} has no administrator tag")
            return None
        return api

    def create(self, vhost: str) -> None:
        """Make ``vhost`` and give the user every permission on it."""
        self._request("PUT", f"/api/vhosts/{quote(vhost, safe='')}", {})
        grant = {"configure": ".*", "write": ".*", "read": ".*"}
        path = f"/api/permissions/{quote(vhost, safe='')}/{quote(self.user, safe='')}"
        self._request("PUT", path, grant)

    def delete(self, vhost: str) -> None:
        """Delete ``vhost`` with everything in it."""
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


class LocalRabbitmqctl:
    """``rabbitmqctl`` on the default node, for a broker on this machine."""

    name = "rabbitmqctl"

    def __init__(self, executable: str, user: str) -> None:
        self.executable = executable
        self.user = user

    @classmethod
    def of(cls, url: str, tried: list[str]) -> LocalRabbitmqctl | None:
        """rabbitmqctl, when installed and the broker at ``url`` is on this machine."""
        executable = shutil.which("rabbitmqctl")
        if executable is None:
            tried.append("rabbitmqctl is not installed")
            return None
        if urlsplit(url).hostname not in _LOCAL_HOSTS:
            tried.append("rabbitmqctl serves only a broker on this machine")
            return None
        return cls(executable, _credentials(url)[0])

    def create(self, vhost: str) -> None:
        """Make ``vhost`` and give the user every permission on it."""
        self._ctl("add_vhost", vhost)
        self._ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def delete(self, vhost: str) -> None:
        """Delete ``vhost`` with everything in it."""
        self._ctl("delete_vhost", vhost)

    def _ctl(self, *args: str) -> None:
        try:
            subprocess.run(
                [self.executable, "-q", *args], check=True, capture_output=True, timeout=60
            )
        except subprocess.CalledProcessError as exc:
            output = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
            first = output.splitlines()[0] if output else f"exit code {exc.returncode}"
            raise OSError(f"rabbitmqctl {args[0]}: {first}") from None
        except subprocess.TimeoutExpired:
            raise OSError(f"rabbitmqctl {args[0]} did not answer within 60s") from None


async def _reaches(url: str) -> bool:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


@contextlib.asynccontextmanager
async def throwaway_vhost(url: str, *, prefix: str) -> AsyncIterator[ThrowawayVhost]:
    """A new virtual host ``<prefix><8 hex>`` at ``url``'s broker, deleted afterwards.

    Yields a ``ThrowawayVhost`` whose ``url`` is None when no way to make one worked (the
    reasons in ``tried``). Only the first node of a cluster URL is used.
    """
    first = broker_urls(url)[0]
    result = ThrowawayVhost()
    makers: list[_VhostMaker] = [
        maker
        for maker in (
            await asyncio.to_thread(ManagementApi.of, first, result.tried),
            LocalRabbitmqctl.of(first, result.tried),
        )
        if maker is not None
    ]
    vhost = f"{prefix}{uuid.uuid4().hex[:8]}"
    for maker in makers:
        try:
            await asyncio.to_thread(maker.create, vhost)
        except (OSError, ValueError) as exc:
            result.tried.append(f"{maker.name} failed: {exc}")
            continue
        fresh = with_vhost(first, vhost)
        if not await _reaches(fresh):
            # rabbitmqctl reached another node than the URL's broker: leave nothing there.
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(maker.delete, vhost)
            result.tried.append(f"the virtual host {maker.name} made is not at that broker")
            continue
        result.url, result.vhost, result.made_by = fresh, vhost, maker.name
        try:
            yield result
        finally:
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(maker.delete, vhost)
        return
    yield result
