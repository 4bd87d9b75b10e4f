"""A small HTTP server on asyncio for liveness, readiness and the Prometheus metrics.

``/livez`` answers 200 while the process runs its event loop; ``/readyz`` answers 200 only
when every readiness check passes (broker connected, store takes a write, the circuit breaker
not holding deliveries, the broker taking publishes), else 503 with the failing checks named;
``/metrics`` is Prometheus' text format. One server may serve all three, or health and
metrics may listen on ports of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from faststream.rabbit import RabbitBroker
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sagakit.runtime._breaker import CircuitBreaker, Dependency
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.health")

Check = Callable[[], Awaitable[bool]]

# A check that takes longer than this counts as failed: readiness must answer quickly even
# when the database host has vanished and connecting would hang.
CHECK_TIMEOUT_SECONDS = 2.0
_MAX_REQUEST_HEAD_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]

# The request's Accept header, for the route that negotiates (each connection is a task).
_accept: contextvars.ContextVar[str] = contextvars.ContextVar("sagakit_http_accept", default="")


def broker_check(broker: RabbitBroker) -> Check:
    """Passes while the broker's connection is up."""

    async def broker_connected() -> bool:
        return bool(await broker.ping(timeout=CHECK_TIMEOUT_SECONDS / 2))

    return broker_connected


def store_check(store: Store) -> Check:
    """Passes when the store takes a write (``Store.probe``): a read-only file, a full disk
    or a standby answer ``SELECT 1`` but cannot do a step's work."""

    async def store_writes() -> bool:
        await store.probe()
        return True

    return store_writes


def consuming_check(breaker: CircuitBreaker) -> Check:
    """Passes while the circuit breaker lets deliveries through."""

    async def not_holding() -> bool:
        return not breaker.is_open

    return not_holding


def publishing_check(breaker: CircuitBreaker) -> Check:
    """Passes unless the last publish found the broker refusing messages (a connection
    lost, a queue without its quorum) and none has been confirmed since."""

    async def broker_takes_publishes() -> bool:
        return not breaker.is_open_for(Dependency.BROKER)

    return broker_takes_publishes


async def _passes(check: Check) -> bool:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        logger.debug("readiness check %s failed: %s", getattr(check, "__name__", check), exc)
        return False


def health_routes(checks: Mapping[str, Check]) -> dict[str, Route]:
    """``/livez`` and ``/readyz`` over these named readiness checks."""

    async def livez() -> Response:
        return Response(HTTPStatus.OK, b"ok\n")

    async def readyz() -> Response:
        names = list(checks)
        results = await asyncio.gather(*(_passes(checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        status = HTTPStatus.OK if all(results) else HTTPStatus.SERVICE_UNAVAILABLE
        return Response(status, json.dumps(report).encode() + b"\n", "application/json")

    return {"/livez": livez, "/readyz": readyz}


def metrics_routes(registry: CollectorRegistry | None = None) -> dict[str, Route]:
    """``/metrics``: the service's registry (default: the process' default one), in the
    OpenMetrics format when the scraper's ``Accept`` asks for it, else Prometheus' text."""
    chosen = REGISTRY if registry is None else registry

    async def metrics() -> Response:
        encoder, content_type = choose_encoder(_accept.get())
        return Response(HTTPStatus.OK, encoder(chosen), content_type)

    return {"/metrics": metrics}


class HttpEndpoint:
    """Serves a few GET routes over HTTP/1.1, one request per connection.

    Args:
        routes: Path to handler.
        port: The TCP port (0 picks a free one; see ``port`` after ``start``).
        host: The address to bind; every interface by default, as scrapers and probes
            come from outside a container.
    """

    def __init__(self, routes: Mapping[str, Route], *, port: int, host: str = "0.0.0.0") -> None:
        self.routes = dict(routes)
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one once started)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        """Start listening."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self._port)
            logger.info("serving %s on port %d", ", ".join(sorted(self.routes)), self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, accept = await self._read_request(reader)
            _accept.set(accept)
            response = await self._respond(method, path)
            head = (
                f"HTTP/1.1 {response.status.value} {response.status.phrase}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else response.body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            logger.exception("HTTP endpoint failed to answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, str]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        if len(head) > _MAX_REQUEST_HEAD_BYTES:
            return "", "", ""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return "", "", ""
        method, target, _version = parts
        accept = next(
            (
                line.split(":", 1)[1].strip()
                for line in lines[1:]
                if line.lower().startswith("accept:")
            ),
            "",
        )
        return method, target.split("?", 1)[0], accept

    async def _respond(self, method: str, path: str) -> Response:
        if not method:
            return Response(HTTPStatus.BAD_REQUEST, b"bad request\n")
        route = self.routes.get(path)
        if route is None:
            return Response(HTTPStatus.NOT_FOUND, b"not found\n")
        if method not in {"GET", "HEAD"}:
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n")
        return await route()


def endpoints_for(
    *,
    health_port: int | None,
    metrics_port: int | None,
    checks: Mapping[str, Check],
    registry: CollectorRegistry | None = None,
) -> list[HttpEndpoint]:
    """The servers a service needs: one if both ports are equal, else one per set port."""
    by_port: dict[int, dict[str, Route]] = {}
    if health_port is not None:
        by_port.setdefault(health_port, {}).update(health_routes(checks))
    if metrics_port is not None:
        by_port.setdefault(metrics_port, {}).update(metrics_routes(registry))
    return [HttpEndpoint(routes, port=port) for port, routes in by_port.items()]
