"""The console served beside the tracker's consumer, in the same event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger("sagakit.console")


class _Server(uvicorn.Server):
    # FastStream owns the process's signals: uvicorn must not take them over.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """An ASGI app served on ``host:port`` by uvicorn, started and stopped with the app.

    Args:
        app: The console.
        host: The address to bind (127.0.0.1 unless an operator says otherwise).
        port: The port; 0 picks a free one (``port`` tells which once started).
    """

    def __init__(self, app: ASGIApp, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Listen; raises OSError when the address is taken."""
        self._task = asyncio.create_task(self._server.serve(), name="console")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"the console could not listen on {self.host}:{self.port}")
            await asyncio.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
        logger.info("console on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and finish open requests."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
