"""One robust connection over several broker nodes: the first that answers, the others after.

aio-pika's ``RobustConnection`` reconnects to the one URL it was made with, and FastStream's
``RabbitBroker`` takes one URL. This module is the one place that bends them:

- ``FailoverConnection`` is a ``RobustConnection`` that moves its ``url`` to the next node
  whenever a connection attempt fails or an established connection is lost. aio-pika calls
  the connection's (public) ``close_callbacks`` in both cases, before its reconnect loop
  tries again with ``url``. Nodes not tried since the last good connection are tried at
  once; after a whole round, the configured reconnect interval applies. With ``fail_fast``
  (the default), the first connect gives up after one round instead of after one node.
- ``rabbit_broker`` builds a ``RabbitBroker`` whose connection is a ``FailoverConnection``.
  FastStream has no parameter for a connection factory; it connects with
  ``aio_pika.connect_robust(**broker._connection_kwargs)``, and ``connect_robust`` takes a
  ``connection_class``. That dictionary is the one private name used here;
  ``tests/unit/test_failover.py`` fails if FastStream or aio-pika change under it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, cast

from aio_pika import RobustConnection
from aiormq.connection import parse_bool
from faststream.rabbit import RabbitBroker
from yarl import URL

from ._broker_urls import BrokerHost, broker_hosts, broker_urls


class FailoverConnection(RobustConnection):
    """A robust connection that goes round ``hosts`` (host and port of each node).

    Made by ``aio_pika.connect_robust(url, connection_class=failover_class(hosts))``; the
    URL names the first node and carries everything else (credentials, virtual host, TLS,
    options), which every node shares.
    """

    def __init__(
        self,
        url: URL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        hosts: Sequence[BrokerHost] = (),
        **kwargs: Any,
    ) -> None:
        url = URL(url)
        fail_fast = kwargs.pop("fail_fast", url.query.get("fail_fast", True))
        # aio-pika's own fail-fast ends the reconnect loop after the first node refuses.
        super().__init__(url, loop=loop, fail_fast=False, **kwargs)
        self._fail_fast = parse_bool(fail_fast)
        self._hosts = list(hosts) or [BrokerHost(url.host or "localhost", url.explicit_port)]
        self._current = 0
        self._misses = 0  # failed attempts and losses since the last good connection
        self._interval = self.reconnect_interval
        self._connected_once = False
        self._gave_up: asyncio.Future[BaseException | None] | None = None
        self.close_callbacks.add(self._next_host)
        self.reconnect_callbacks.add(self._reconnected)

    @property
    def hosts(self) -> tuple[BrokerHost, ...]:
        """The nodes, in the order they are tried."""
        return tuple(self._hosts)

    @property
    def current_host(self) -> BrokerHost:
        """The node connected to, or tried next."""
        return self._hosts[self._current]

    async def connect(self, timeout: Any = None) -> None:  # noqa: ASYNC109 (aio-pika's)
        """Connect to the first node that answers, trying each once before giving up."""
        if self._connected_once or not self._fail_fast:
            await super().connect(timeout)
            self._on_good_connection()
            return
        gave_up = self._gave_up = asyncio.get_running_loop().create_future()
        connecting = asyncio.ensure_future(super().connect(timeout))
        try:
            await asyncio.wait({connecting, gave_up}, return_when=asyncio.FIRST_COMPLETED)
            if connecting.done():
                connecting.result()
                self._on_good_connection()
                return
            error = gave_up.result()
        except BaseException:
            await self._abandon(connecting)
            raise
        await self._abandon(connecting)
        raise error or ConnectionError(f"no broker node answered: {self._describe_hosts()}")

    async def _abandon(self, connecting: asyncio.Future[None]) -> None:
        # Closed, or the reconnect loop would go on trying in the background for ever.
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await self.close()

    def _on_good_connection(self) -> None:
        self._connected_once = True
        self._misses = 0
        self.reconnect_interval = self._interval
        self._gave_up = None

    def _reconnected(self, _connection: object) -> None:
        self._on_good_connection()

    def _next_host(self, _connection: object, exc: BaseException | None = None) -> None:
        if self._close_called or self.is_closed:
            return  # closed on purpose: nowhere to go
        self._misses += 1
        self._current = (self._current + 1) % len(self._hosts)
        host = self._hosts[self._current]
        self.url = self.url.with_host(host.host).with_port(host.port)
        round_done = self._misses >= len(self._hosts)
        self.reconnect_interval = self._interval if round_done else 0
        if round_done and self._gave_up is not None and not self._gave_up.done():
            self._gave_up.set_result(exc)

    def _describe_hosts(self) -> str:
        return ", ".join(f"{h.host}:{h.port or 'default'}" for h in self._hosts)


def failover_class(hosts: Sequence[BrokerHost]) -> type[FailoverConnection]:
    """A ``connection_class`` for ``aio_pika.connect_robust`` that goes round ``hosts``."""
    # connect_robust calls connection_class(url, loop=..., **options): a partial will do.
    return cast(type[FailoverConnection], functools.partial(FailoverConnection, hosts=hosts))


def rabbit_broker(urls: str | Sequence[str], **options: Any) -> RabbitBroker:
    """A FastStream ``RabbitBroker`` on every node of ``urls``, tried in order.

    Args:
        urls: Anything ``broker_urls`` takes: one URL, the comma form, a list.
        **options: ``RabbitBroker`` keyword arguments.
    """
    addresses = broker_urls(urls)
    broker = RabbitBroker(addresses[0], **options)
    # The one private name this module relies on (see the module's docstring).
    broker._connection_kwargs["connection_class"] = failover_class(broker_hosts(addresses))
    return broker
