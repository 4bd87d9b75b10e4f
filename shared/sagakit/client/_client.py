"""A client of a flow: starts sagas on the wire contract and watches them end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import PublishError
from pydantic import ValidationError

from sagakit._context import SagaContext
from sagakit._envelope import Envelope, EventPayload, derived_event_id
from sagakit._exceptions import BrokerRefused, BrokerUnavailable, SpecError
from sagakit._exceptions import EventNotRouted as EventNotRouted
from sagakit._exceptions import WatchTimeout as WatchTimeout
from sagakit.broker._failover import failover_class
from sagakit.broker._urls import broker_hosts, broker_urls, redacted
from sagakit.observability._tracing import current_trace_headers, saga_root_span
from sagakit.spec._spec import SagaSpec

logger = logging.getLogger("sagakit.client")

OnSagaEnd = Callable[[uuid.UUID, list[Envelope[Any]]], object]
"""Called by ``EventWatch.wait_all`` with a saga's id and its events as soon as it ends."""


class _TransportErrorFilter(logging.Filter):
    # aiormq logs a failed first connection as an error; BrokerUnavailable says it already.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error when creating transport")


_AIORMQ_LOGGER = logging.getLogger("aiormq.connection")
_CONNECT_ERRORS = (aiormq.exceptions.AMQPError, OSError, TimeoutError)
_TRANSPORT_ERRORS = _TransportErrorFilter()


@overload
async def connect(
    url: str | Sequence[str], *, connect_timeout: float
) -> AbstractRobustConnection: ...


@overload
async def connect(
    url: str | Sequence[str], *, connect_timeout: float, robust: Literal[False]
) -> AbstractConnection: ...


async def connect(
    url: str | Sequence[str], *, connect_timeout: float, robust: bool = True
) -> AbstractConnection:
    """A connection to the first broker node of ``url`` that answers, or BrokerUnavailable.

    ``url`` is anything ``broker_urls`` takes: one URL, the comma form
    (``amqp://u:p@host1:5672,host2:5672/vh``) or a list. A robust connection reconnects by
    itself after the first success, to the next node when one is lost; a plain one does not.
    The error names every node tried, without password.
    """
    urls = broker_urls(url)
    _AIORMQ_LOGGER.addFilter(_TRANSPORT_ERRORS)
    try:
        if robust:
            return await aio_pika.connect_robust(
                urls[0],
                timeout=connect_timeout,
                connection_class=failover_class(broker_hosts(urls)),
            )
        failure: BaseException | None = None
        for one in urls:
            try:
                return await aio_pika.connect(one, timeout=connect_timeout)
            except _CONNECT_ERRORS as exc:
                failure = exc
        assert failure is not None
        raise failure
    except _CONNECT_ERRORS as exc:
        refusal = refusal_of(exc, urls[0])
        if refusal is not None:
            raise BrokerRefused(refusal) from exc
        raise BrokerUnavailable(
            f"no RabbitMQ broker answered at {redacted(','.join(urls))} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        _AIORMQ_LOGGER.removeFilter(_TRANSPORT_ERRORS)


def refusal_of(error: BaseException, url: str) -> str | None:
    """What a broker that answered but refused the connection means, or None.

    RabbitMQ refuses a wrong user or password with ``ACCESS_REFUSED`` before the virtual
    host is opened, and closes the connection instead of opening a virtual host that does
    not exist or the user may not use; aiormq reports the latter as an unexpected frame.
    """
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    where = redacted(url)
    if isinstance(error, aiormq.exceptions.ProbableAuthenticationError) or "ACCESS_REFUSED" in str(
        error
    ):
        return (
            f"the broker at {where} refused user {user!r}: wrong user name or password. "
            "Fix the credentials in the broker URL (RABBITMQ_URL, <SERVICE>_RABBITMQ_URL "
            "or --url)"
        )
    if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(error):
        path = parts.path
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
        return (
            f"the broker at {where} would not open virtual host {vhost!r} for user {user!r}: "
            f"it does not exist or the user has no permissions on it. Create it "
            f"(rabbitmqctl add_vhost {vhost}; rabbitmqctl set_permissions -p {vhost} {user} "
            "'.*' '.*' '.*') or fix the virtual host at the end of the broker URL"
        )
    return None


class SagaClient:
    """Starts sagas of one flow and watches their events, with publisher confirms.

    Args:
        url: The broker, e.g. ``amqp://guest:guest@127.0.0.1:5672/``; for a cluster, its
            nodes in the comma form (``amqp://u:p@host1:5672,host2:5672/vh``) or as a list
            of URLs: the client connects to the first that answers and moves to the next
            when its node is lost.
        spec: The flow whose start event this client publishes.
        producer: The ``producer`` written into the events this client publishes.
        connect_timeout: Seconds to wait for the broker before raising BrokerUnavailable.

    Example:
        ```python
        async with SagaClient(url, ORDER_SAGA) as client, client.watch() as watch:
            started = await client.start(order)
            events = await watch.wait_for_end(started.context.saga_id, timeout=30)
        ```
    """

    def __init__(
        self,
        url: str | Sequence[str],
        spec: SagaSpec,
        *,
        producer: str = "saga-cli",
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url if isinstance(url, str) else ",".join(url)
        self.spec = spec
        self.producer = producer
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def __aenter__(self) -> SagaClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare the flow's exchange if missing."""
        if self._connection is not None:
            return
        connection = await connect(self.url, connect_timeout=self.connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = await channel.declare_exchange(
                self.spec.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel

    async def close(self) -> None:
        """Close the connection (and with it every watch queue)."""
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            await connection.close()

    @property
    def exchange(self) -> AbstractExchange:
        """The flow's exchange; the client must be connected."""
        if self._exchange is None:
            raise RuntimeError("SagaClient is not connected: use `async with SagaClient(...)`")
        return self._exchange

    def new_saga(self, payload: EventPayload, *, deadline: datetime | None = None) -> Envelope[Any]:
        """The start event for ``payload`` with a new saga id, not yet published."""
        if payload.event_type != self.spec.start_event:
            raise SpecError(
                f"{self.spec.saga_type} starts with {self.spec.start_event!r}, "
                f"not {payload.event_type!r}"
            )
        context = SagaContext.start(self.spec.saga_type, deadline=deadline)
        return Envelope.new(
            payload,
            context=context,
            producer=self.producer,
            event_id=derived_event_id(context.saga_id, self.producer, payload.event_type),
        )

    async def start(
        self, payload: EventPayload, *, deadline: datetime | None = None
    ) -> Envelope[Any]:
        """Publish the flow's start event for ``payload`` as a new saga; return what was sent.

        Args:
            payload: The start event's payload (e.g. an ``OrderCreated``).
            deadline: When set, forward work after it fails the step that meets it.

        Raises:
            EventNotRouted: No queue is bound for the start event (nothing is running).
            BrokerUnavailable: The connection to the broker is lost.
        """
        envelope = self.new_saga(payload, deadline=deadline)
        # The saga's root span (when tracing): its trace id is the saga id.
        with saga_root_span(envelope.context):
            await self.publish(envelope)
        return envelope

    async def publish(self, envelope: Envelope[Any]) -> None:
        """Publish ``envelope`` with the properties and headers of the wire contract."""
        headers = {**current_trace_headers(), **envelope.amqp_headers()}
        await self.publish_raw(
            envelope.encode(),
            envelope.event_type,
            headers=headers,
            message_id=str(envelope.event_id),
            correlation_id=str(envelope.context.saga_id),
            type=envelope.event_type,
            content_type="application/json",
            timestamp=envelope.occurred_at,
        )

    async def publish_raw(
        self,
        body: bytes,
        routing_key: str,
        headers: Mapping[str, Any] | None = None,
        *,
        mandatory: bool = True,
        **properties: Any,
    ) -> None:
        """Publish any bytes to the flow's exchange, persistent and confirmed.

        Args:
            body: The message body, as is.
            routing_key: Usually an event type.
            headers: AMQP headers.
            mandatory: Raise EventNotRouted when no queue is bound for ``routing_key``.
            **properties: Further ``aio_pika.Message`` properties (``message_id``, ``type``…).
        """
        properties.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        message = aio_pika.Message(body, headers=dict(headers or {}), **properties)
        try:
            await self.exchange.publish(message, routing_key=routing_key, mandatory=mandatory)
        except PublishError as exc:
            raise EventNotRouted(
                f"no queue is bound for {routing_key!r} on exchange {self.spec.exchange!r}: "
                "are the services running?"
            ) from exc
        except (
            aiormq.exceptions.AMQPConnectionError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise BrokerUnavailable(
                f"lost the broker at {redacted(self.url)} ({type(exc).__name__}: {exc})"
            ) from exc

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[EventWatch]:
        """Collect every event of the flow from now on; open it before publishing."""
        if self._connection is None:
            raise RuntimeError("SagaClient is not connected: use `async with SagaClient(...)`")
        channel = await self._connection.channel()
        try:
            watch = EventWatch(self.spec)
            await watch.attach(channel, self.exchange)
            yield watch
        finally:
            await channel.close()


class EventWatch:
    """The events of a flow as they arrive, grouped per saga.

    A watch has its own exclusive, auto-deleted queue bound with ``#`` to the flow's
    exchange, so it sees each event once, in the order the broker delivered it.
    """

    def __init__(self, spec: SagaSpec) -> None:
        self.spec = spec
        self.undecodable = 0
        self._terminal = spec.terminal_events()
        self._events: dict[uuid.UUID, list[Envelope[Any]]] = {}
        self._ended: set[uuid.UUID] = set()
        self._progress = asyncio.Event()

    async def attach(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        """Declare this watch's queue on ``channel``, bind it and start consuming."""
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    def events(self, saga_id: uuid.UUID) -> list[Envelope[Any]]:
        """The events of ``saga_id`` seen so far, up to its terminal event."""
        return list(self._events.get(saga_id, ()))

    def ended(self, saga_id: uuid.UUID) -> bool:
        """True once a terminal event of ``saga_id`` has arrived."""
        return saga_id in self._ended

    async def wait_for_end(
        self,
        saga_id: uuid.UUID,
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> list[Envelope[Any]]:
        """The events of ``saga_id`` up to and including its terminal event.

        Raises:
            WatchTimeout: (a TimeoutError) with the events seen, when it did not end in time.
        """
        ended = await self.wait_all([saga_id], timeout=timeout)
        return ended[saga_id]

    async def wait_all(
        self,
        saga_ids: Iterable[uuid.UUID],
        *,
        timeout: float,  # noqa: ASYNC109
        on_end: OnSagaEnd | None = None,
    ) -> dict[uuid.UUID, list[Envelope[Any]]]:
        """Wait until every saga of ``saga_ids`` has ended; their events by saga id.

        Args:
            saga_ids: The sagas to wait for.
            timeout: Seconds, for all of them together.
            on_end: Called once per saga as soon as it has ended.

        Raises:
            WatchTimeout: (a TimeoutError) naming the sagas still pending and what was seen.
        """
        wanted = list(dict.fromkeys(saga_ids))
        pending = dict.fromkeys(wanted)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout
        while True:
            for saga_id in [s for s in pending if s in self._ended]:
                del pending[saga_id]
                if on_end is not None:
                    on_end(saga_id, self.events(saga_id))
            if not pending:
                return {saga_id: self.events(saga_id) for saga_id in wanted}
            remaining = give_up_at - loop.time()
            if remaining <= 0:
                raise self._timeout(wanted, pending, timeout)
            # No await between the check above and this clear, so no arrival is missed.
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    def _timeout(
        self, wanted: list[uuid.UUID], pending: Iterable[uuid.UUID], timeout: float
    ) -> WatchTimeout:
        pending = list(pending)
        seen = {saga_id: self.events(saga_id) for saga_id in wanted}
        first = pending[0]
        trail = " -> ".join(e.event_type for e in seen[first]) or "no event at all"
        return WatchTimeout(
            f"{len(pending)} of {len(wanted)} saga(s) did not end within {timeout:g}s; "
            f"saga {first} saw: {trail}",
            pending=pending,
            seen=seen,
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        envelope = self._decode(message.body)
        if envelope is None:
            self.undecodable += 1
            return
        saga_id = envelope.context.saga_id
        if saga_id in self._ended:
            return  # a late duplicate or re-announcement after the end
        self._events.setdefault(saga_id, []).append(envelope)
        if envelope.event_type in self._terminal:
            self._ended.add(saga_id)
            self._progress.set()

    def _decode(self, body: bytes) -> Envelope[Any] | None:
        try:
            event_type = json.loads(body).get("event_type")
            model = self.spec.events.get(event_type, EventPayload)
            return Envelope[model].model_validate_json(body)  # type: ignore[valid-type]
        except (ValueError, AttributeError, TypeError, ValidationError, RecursionError):
            logger.debug("watch skipped an undecodable message")
            return None
