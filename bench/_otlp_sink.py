"""A local OTLP/HTTP sink: answers 200 to every export and counts what it was sent.

Run as ``python bench/_otlp_sink.py``: it prints the port it listens on, then, after
SIGTERM, one JSON line with the number of requests and bytes received.
"""

from __future__ import annotations

import asyncio
import json
import signal

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class Sink:
    """Counts OTLP export requests; the body is read and dropped."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                self.requests += 1
                self.bytes += length
                writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve() -> None:
    sink = Sink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()
    print(json.dumps({"requests": sink.requests, "bytes": sink.bytes}), flush=True)


if __name__ == "__main__":
    asyncio.run(serve())
