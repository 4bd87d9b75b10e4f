"""A small TCP proxy for fault injection: added latency, and every connection cut on command.

Put it between clients and a server (here: the services and RabbitMQ). Each accepted
connection opens one to the upstream address and bytes are copied both ways. ``latency``
delays every chunk by that many seconds in each direction, without reordering and without
throttling throughput; ``cut()`` aborts every open connection at once, as a network failure
or a load balancer restart would (clients see a reset, not a clean AMQP close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

logger = logging.getLogger("chaos.proxy")

_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards ``host:port`` (a free port when 0) to ``upstream_host:upstream_port``.

    Args:
        upstream_host: Where connections go.
        upstream_port: Its port.
        host: The address to listen on.
        port: The port to listen on; 0 picks a free one (see ``port`` after ``start``).

    Example:
        ```python
        async with TcpProxy("127.0.0.1", 5672) as proxy:
            url = proxy.rewrite("amqp://guest:guest@127.0.0.1:5672/vhost")
            proxy.latency = 0.1
            proxy.cut()
        ```
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.latency = 0.0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def connections(self) -> int:
        """How many connections are open through the proxy."""
        return len(self._links)

    def rewrite(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{self.host}:{self.port}" if credentials else self.address
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def address(self) -> str:
        """``host:port`` the proxy listens on."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; the port is known once this returns."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("proxy %s -> %s:%d", self.address, self.upstream_host, self.upstream_port)

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> int:
        """Abort every open connection; returns how many there were."""
        links, self._links = list(self._links), set()
        for link in links:
            link.abort()
        self.cuts += 1
        logger.info("proxy cut %d connection(s)", len(links))
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            # The server is away (a broker restart): the client sees the refusal as a reset.
            writer.transport.abort()
            return
        link = _Link(client=writer, upstream=up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        link.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        # Chunks wait in a queue with the time they may leave, so latency delays each
        # chunk once instead of slowing the copy down to one chunk per delay.
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await pending.get()
                if data == b"":
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(_CHUNK):
                if sender.done():
                    break
                pending.put_nowait((loop.time() + self.latency, data))
            pending.put_nowait((loop.time(), b""))
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
            # One side is done: the other must not linger half-open.
            link.abort()
