"""One robust connection over several broker nodes: the first that answers, the others after.

aio-pika's ``RobustConnection`` reconnects to the one URL it was made with, and FastStream's
``RabbitBroker`` takes one URL. This module is the one place that bends them:

- ``FailoverConnection`` is a ``RobustConnection`` that moves its ``url`` to the next node
  whenever a connection attempt fails or an established connection is lost. aio-pika calls
  the connection's (public) ``close_callbacks`` in both cases, before its reconnect loop
  tries again with ``url``. Nodes not tried since the last connection that lasted are
  tried at once; after a whole round, the configured reconnect interval applies. With ``fail_fast``
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
import logging
from collections.abc import Sequence
from typing import Any, cast
from weakref import WeakSet

from aio_pika import RobustChannel, RobustConnection, RobustExchange
from aio_pika.abc import AbstractMessage
from aiormq.connection import parse_bool
from aiormq.exceptions import AMQPConnectionError, DeliveryError
from faststream.rabbit import RabbitBroker
from yarl import URL

from sagakit.broker._urls import BrokerHost, broker_hosts, broker_urls

logger = logging.getLogger("sagakit.broker")

NACKS_BEFORE_RENEWAL = 3
"""Publishes refused in a row on one channel before it is opened anew."""
_FIRST_RENEWAL_PAUSE_SECONDS = 1.0
_LONGEST_RENEWAL_PAUSE_SECONDS = 30.0


class _FirstRoundQuiet(logging.Filter):
    """Keeps aio-pika's "attempt failed, reconnecting" warnings of a first connection quiet:
    with fail-fast it gives up after one round instead, and says so once itself."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: WeakSet[FailoverConnection] = WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and args[0] in self.connections)


_FIRST_ROUND = _FirstRoundQuiet()
logging.getLogger("aio_pika.robust_connection").addFilter(_FIRST_ROUND)


class ConnectionRenewed(AMQPConnectionError):
    """Why sagakit dropped a connection (``FailoverConnection.renew``).

    A connection error, as a network failure's would be: publishes in flight fail the same
    way, and whoever publishes already handles that.
    """


class _CountingExchange(RobustExchange):
    """An exchange that tells its channel whether the broker confirmed each publish."""

    async def publish(
        self,
        message: AbstractMessage,
        routing_key: str,
        *,
        mandatory: bool = True,
        immediate: bool = False,
        timeout: Any = None,  # noqa: ASYNC109 (aio-pika's signature)
    ) -> Any:
        channel = self.channel
        try:
            confirmation = await super().publish(
                message, routing_key, mandatory=mandatory, immediate=immediate, timeout=timeout
            )
        except DeliveryError:
            if isinstance(channel, FailoverChannel):
                channel.refused()
            raise
        if isinstance(channel, FailoverChannel):
            channel.confirmed()
        return confirmation


class FailoverChannel(RobustChannel):
    """A robust channel that has its connection renewed when the broker refuses all it sends.

    On RabbitMQ 3.10, a channel that first publishes to a quorum queue while the queue's
    leader is on a node that has just died (before the election is over) gets every later
    publish to that queue refused (``basic.nack``) for as long as the channel lives,
    although the queue has a new leader and a fresh channel publishes to it at once
    (tests/e2e/test_broker_failover.py shows it). After ``NACKS_BEFORE_RENEWAL`` refusals
    in a row, this channel drops its connection, as a network failure would: the robust
    connection reconnects (to the next node) and restores every channel, declarations and
    consumers, and publishing works again. A channel of its own cannot be reopened in
    place: publishes racing with the reopening make the broker close the whole connection.
    Renewals that change nothing come ever less often (1 s, 2 s, 4 s … 30 s apart, until a
    publish is confirmed), so that a queue refusing on purpose costs little.
    """

    EXCHANGE_CLASS = _CountingExchange

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused_in_a_row = 0
        self._renewed_at = float("-inf")
        self._pause = _FIRST_RENEWAL_PAUSE_SECONDS

    def confirmed(self) -> None:
        """The broker confirmed a publish."""
        self._refused_in_a_row = 0
        self._pause = _FIRST_RENEWAL_PAUSE_SECONDS

    def refused(self) -> None:
        """The broker refused a publish (``basic.nack``)."""
        self._refused_in_a_row += 1
        if self._refused_in_a_row < NACKS_BEFORE_RENEWAL:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._renewed_at < self._pause:
            return
        if self._renewed_at > float("-inf"):
            self._pause = min(2 * self._pause, _LONGEST_RENEWAL_PAUSE_SECONDS)
        self._renewed_at = loop.time()
        logger.warning(
            "the broker refused %d publishes in a row on channel %s: renewing the connection",
            self._refused_in_a_row,
            self,
        )
        self._refused_in_a_row = 0
        if isinstance(self._connection, FailoverConnection):
            self._connection.renew()


class FailoverConnection(RobustConnection):
    """A robust connection that goes round ``hosts`` (host and port of each node).

    Made by ``aio_pika.connect_robust(url, connection_class=failover_class(hosts))``; the
    URL names the first node and carries everything else (credentials, virtual host, TLS,
    options), which every node shares. Its channels are ``FailoverChannel``s.
    """

    CHANNEL_CLASS = FailoverChannel

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
        self._misses = 0  # failed attempts and losses since the last stable connection
        self._interval = self.reconnect_interval
        # Read by the reconnect loop right after the first connection, before connect()
        # returns; set per failure from then on (see _on_good_connection, _next_host).
        self.reconnect_interval = 0
        self._connected_once = False
        self._connected_at: float | None = None
        self._gave_up: asyncio.Future[BaseException | None] | None = None
        self._last_failure: BaseException | None = None
        self._renewing = False
        self._renewal: asyncio.Task[Any] | None = None
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

    def renew(self) -> None:
        """Drop the current connection; the reconnect loop opens a new one, to the same node,
        at once, and restores every channel on it (as after a network failure)."""
        transport = self.transport
        if transport is None or self._renewing:
            return
        self._renewing = True
        # What RobustConnection.reconnect() does first; the reconnect loop does the rest.
        self._renewal = self.loop.create_task(
            transport.connection.close(ConnectionRenewed("renewed by sagakit"))
        )

    async def connect(self, timeout: Any = None) -> None:  # noqa: ASYNC109 (aio-pika's)
        """Connect to the first node that answers, trying each once before giving up."""
        if self._connected_once or not self._fail_fast:
            await super().connect(timeout)
            self._on_good_connection()
            return
        gave_up = self._gave_up = asyncio.get_running_loop().create_future()
        _FIRST_ROUND.connections.add(self)
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
        finally:
            _FIRST_ROUND.connections.discard(self)
        await self._abandon(connecting)
        raise error or ConnectionError(f"no broker node answered: {self._describe_hosts()}")

    async def _abandon(self, connecting: asyncio.Future[None]) -> None:
        # Closed, or the reconnect loop would go on trying in the background for ever.
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await self.close()

    def _on_good_connection(self) -> None:
        self._connected_once = True
        self._connected_at = self.loop.time()
        self._gave_up = None
        # aio-pika's reconnect loop sleeps this long after each good connection before it
        # heeds a loss: none, so that a node lost soon after a failover is left at once.
        # A node that keeps dropping fresh connections is still paced (see _next_host).
        self.reconnect_interval = 0

    def _reconnected(self, _connection: object) -> None:
        self._on_good_connection()

    def _next_host(self, _connection: object, exc: BaseException | None = None) -> None:
        if self._close_called or self.is_closed:
            return  # closed on purpose: nowhere to go
        if exc is not None and exc is self._last_failure:
            # A node that accepts the connection but fails its restore reports that one
            # failure twice (as the restore's and as the connection's): one miss.
            return
        self._last_failure = exc
        if self._renewing:
            # Our own doing (the close reports no error, or its own): the node is fine.
            self._renewing = False
            self.reconnect_interval = 0
            return
        left = self.current_host
        connected_at, self._connected_at = self._connected_at, None
        if connected_at is not None and self.loop.time() - connected_at >= self._interval:
            self._misses = 0  # a connection that lasted: every node may be tried afresh
        self._misses += 1
        self._current = (self._current + 1) % len(self._hosts)
        host = self._hosts[self._current]
        self.url = self.url.with_host(host.host).with_port(host.port)
        round_done = self._misses >= len(self._hosts)
        self.reconnect_interval = self._interval if round_done else 0
        logger.info(
            "broker node %s:%s unavailable (%s: %s); trying %s:%s in %gs",
            left.host,
            left.port or "default",
            type(exc).__name__,
            exc,
            host.host,
            host.port or "default",
            self.reconnect_interval,
        )
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
