"""Reading, replaying and purging the participants' dead-letter queues over AMQP.

Listing takes every message without acking it and then closes the channel, which returns
them all to the queue: no management plugin is needed and nothing is lost if the command
dies half-way.

A message gets into ``<service>.dlq`` two ways: sagakit parks it (bad input, a
compensation that keeps failing), with its reason and origin in ``x-saga-*`` headers; or the
broker dead-letters it from a work queue (the quorum queue's delivery limit: a message that
keeps killing its consumer), with its history in ``x-death``, newest first. That history
may also name the delay queue (``<queue>.retry``) a message passed through on its way; the
queue it failed in is the work queue, and that is where a replay sends it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from sagakit._exceptions import BrokerUnavailable
from sagakit._exceptions import ReplayFailed as ReplayFailed
from sagakit._exceptions import UnknownMessages as UnknownMessages
from sagakit._exceptions import UnknownService as UnknownService
from sagakit.broker._headers import bounded_headers, frame_max_of, header_budget
from sagakit.broker._identity import identify
from sagakit.broker._topology import (
    ATTEMPT_HEADER,
    DEATH_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_ERROR_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYS_HEADER,
    dead_letter_queue_name,
    is_retry_queue,
    retry_exchange_name,
    work_queue_of,
)
from sagakit.client._client import connect

PARKED_BY_SAGAKIT = "sagakit"
PARKED_BY_BROKER = "broker"

# Headers of a parked message that a replay does not carry back: the message starts its
# new life in the work queue with a fresh retry budget and a fresh death history; its
# first failure's time and its replay count go with it.
_NOT_REPLAYED = frozenset(
    {
        REASON_HEADER,
        ORIGIN_QUEUE_HEADER,
        PARKED_AT_HEADER,
        FIRST_FAILURE_HEADER,
        ATTEMPT_HEADER,
        LAST_ERROR_HEADER,
        REPLAYS_HEADER,
        DEATH_HEADER,
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-last-death-exchange",
        "x-delivery-count",
    }
)
_KEPT_ON_REPLAY = ("x-saga-id", "traceparent", "tracestate", "baggage")
_MAX_DEATHS = 50


@dataclass(frozen=True, slots=True)
class Death:
    """One entry of the broker's death history (``x-death``)."""

    queue: str
    reason: str
    count: int
    exchange: str
    time: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "queue": self.queue,
            "reason": self.reason,
            "count": self.count,
            "exchange": self.exchange,
            "time": self.time,
        }


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """One message in a dead-letter queue, with why and where from.

    Attributes:
        reason: Why it is parked: sagakit's reason (``compensation_failed: …``), or the
            broker's (``delivery_limit: dead-lettered by the broker …``).
        parked_by: ``sagakit`` or ``broker``.
        broker_reason: The broker's own reason when it dead-lettered the message
            (``delivery_limit``, ``rejected``, ``expired``, ``maxlen``), else empty.
        origin_queue: The work queue where the message failed (never a delay queue).
        first_failure_at: When it first failed (kept across retries and replays).
        replays: How often it was replayed before.
        deaths: The broker's death history, newest first.
    """

    service: str
    id: str
    reason: str
    saga_id: str
    event_type: str
    first_failure_at: str
    origin_queue: str
    body: bytes
    parked_by: str = PARKED_BY_SAGAKIT
    broker_reason: str = ""
    replays: int = 0
    deaths: tuple[Death, ...] = ()
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason_code(self) -> str:
        """The reason's code: ``undecodable``, ``compensation_failed``, ``delivery_limit``…"""
        return self.reason.split(":", 1)[0].strip()

    @property
    def reason_codes(self) -> frozenset[str]:
        """Every code the reason names (a park may add ``headers_too_large``)."""
        codes = {part.split(":", 1)[0].strip() for part in self.reason.split("; ")}
        if self.broker_reason:
            codes.add(self.broker_reason)
        return frozenset(codes - {""})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (without the body and headers)."""
        return {
            "service": self.service,
            "id": self.id,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "parked_by": self.parked_by,
            "broker_reason": self.broker_reason,
            "saga_id": self.saga_id,
            "event_type": self.event_type,
            "first_failure_at": self.first_failure_at,
            "origin_queue": self.origin_queue,
            "replays": self.replays,
            "deaths": [death.as_dict() for death in self.deaths],
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Which parked messages a command works on; every given filter must match."""

    ids: frozenset[str] | None = None
    reason: str | None = None
    saga_id: str | None = None
    event_type: str | None = None

    @property
    def is_everything(self) -> bool:
        """True when nothing is filtered out."""
        return self.ids is None and not (self.reason or self.saga_id or self.event_type)

    def matches(self, entry: ParkedMessage) -> bool:
        """True when ``entry`` is selected."""
        if self.ids is not None and entry.id not in self.ids:
            return False
        if self.reason and not (
            self.reason in entry.reason_codes or entry.reason.startswith(self.reason)
        ):
            return False
        if self.saga_id and entry.saga_id != self.saga_id:
            return False
        return not (self.event_type and entry.event_type != self.event_type)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, datetime):
        return _iso(value)
    return "" if value is None else str(value)


def _iso(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def death_history(headers: Mapping[str, Any]) -> tuple[Death, ...]:
    """The broker's death history of a message, newest first (``x-death``).

    Falls back to ``x-first-death-*`` when ``x-death`` is missing or not a list (a
    client may send any header).
    """
    entries = headers.get(DEATH_HEADER)
    deaths: list[Death] = []
    if isinstance(entries, list):
        for entry in entries[:_MAX_DEATHS]:
            if not isinstance(entry, Mapping) or not entry.get("queue"):
                continue
            deaths.append(
                Death(
                    queue=_text(entry.get("queue")),
                    reason=_text(entry.get("reason")),
                    count=_count(entry.get("count", 1)),
                    exchange=_text(entry.get("exchange")),
                    time=_text(entry.get("time")),
                )
            )
    if not deaths and headers.get("x-first-death-queue"):
        deaths.append(
            Death(
                queue=_text(headers.get("x-first-death-queue")),
                reason=_text(headers.get("x-first-death-reason")),
                count=1,
                exchange=_text(headers.get("x-first-death-exchange")),
                time="",
            )
        )
    return tuple(deaths)


def read_parked(
    service: str,
    *,
    body: bytes,
    headers: Mapping[str, Any] | None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    message_type: str | None = None,
    routing_key: str | None = None,
) -> ParkedMessage:
    """What one message in ``service``'s dead-letter queue says about itself.

    Args:
        service: The participant whose dead-letter queue holds the message.
        body: The message body.
        headers: Its headers.
        message_id: The AMQP message id (the body's hash stands in when there is none).
        correlation_id: The AMQP correlation id.
        message_type: The AMQP ``type`` property.
        routing_key: The routing key it was dead-lettered or parked with.
    """
    headers = dict(headers or {})
    deaths = death_history(headers)
    work_deaths = [death for death in deaths if not is_retry_queue(death.queue)]
    retried = sum(death.count for death in deaths if is_retry_queue(death.queue))
    parked_by_sagakit = bool(headers.get(REASON_HEADER)) and bool(headers.get(PARKED_AT_HEADER))
    broker_reason = ""
    if parked_by_sagakit:
        reason = _text(headers.get(REASON_HEADER))
        origin = work_queue_of(_text(headers.get(ORIGIN_QUEUE_HEADER)))
    else:
        # The broker put it here: its newest death is the one that did.
        broker_reason = deaths[0].reason if deaths else "unknown"
        origin = work_deaths[0].queue if work_deaths else ""
        reason = f"{broker_reason}: dead-lettered by the broker"
        if retried:
            reason += f" after {retried} retr{'y' if retried == 1 else 'ies'}"
    if not origin:
        origin = work_queue_of(deaths[0].queue) if deaths else _text(routing_key)
    identity = identify(
        body=body, headers=headers, correlation_id=correlation_id, message_type=message_type
    )
    event_type = identity.event_type or ""
    if not event_type:
        prefix = f"{service}."
        event_type = origin.removeprefix(prefix) if origin.startswith(prefix) else ""
        event_type = event_type or _text(routing_key)
    return ParkedMessage(
        service=service,
        id=message_id or hashlib.sha256(body).hexdigest()[:16],
        reason=reason,
        saga_id=identity.saga_id or "",
        event_type=event_type,
        first_failure_at=_first_failure(headers, deaths),
        origin_queue=origin,
        body=body,
        parked_by=PARKED_BY_SAGAKIT if parked_by_sagakit else PARKED_BY_BROKER,
        broker_reason=broker_reason,
        replays=_count(headers.get(REPLAYS_HEADER, 0)),
        deaths=deaths,
        headers=headers,
    )


def _first_failure(headers: Mapping[str, Any], deaths: Sequence[Death]) -> str:
    recorded = _text(headers.get(FIRST_FAILURE_HEADER))
    if recorded:
        return recorded
    # Never republished by sagakit: the broker's oldest death is the earliest trace.
    times = sorted(death.time for death in deaths if death.time)
    return times[0] if times else _text(headers.get(PARKED_AT_HEADER))


def _parked(service: str, message: AbstractIncomingMessage) -> ParkedMessage:
    return read_parked(
        service,
        body=message.body,
        headers=message.headers,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        message_type=message.type,
        routing_key=message.routing_key,
    )


@dataclass
class _Taken:
    """One service's parked messages, held unacked on a channel of their own."""

    service: str
    channel: AbstractChannel
    messages: list[tuple[AbstractIncomingMessage, ParkedMessage]]


class DeadLetters:
    """The dead-letter queues of some participants, on one broker.

    Args:
        url: The broker URL.
        services: Participant names whose ``<name>.dlq`` queues to work on.
        required: A service without a dead-letter queue on this broker is an error
            (``UnknownService``); otherwise it is skipped and listed in ``missing``.
    """

    def __init__(self, url: str, *, services: Sequence[str], required: bool = False) -> None:
        self._url = url
        self._services = tuple(services)
        self._required = required
        self._connection: AbstractRobustConnection | None = None
        self.missing: list[str] = []

    async def __aenter__(self) -> DeadLetters:
        try:
            # Every node of a cluster URL, the first that answers (sagakit.client._client.connect).
            self._connection = await connect(self._url, connect_timeout=5)
        except BrokerUnavailable:
            raise  # already says which broker, and whether it refused or did not answer
        except Exception as exc:
            raise BrokerUnavailable(f"no RabbitMQ answered: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def parked(
        self,
        ids: Iterable[str] | None = None,
        *,
        reason: str | None = None,
        saga_id: str | None = None,
        event_type: str | None = None,
    ) -> list[ParkedMessage]:
        """Parked messages (all, or those selected), oldest first per service.

        Nothing is removed. Raises ``UnknownMessages`` when ``ids`` names one that is not
        parked (or does not match the other filters).
        """
        selection = _selection(ids, reason, saga_id, event_type)
        taken = await self._take(selection)
        try:
            return [entry for part in taken for _, entry in part.messages]
        finally:
            await _release(taken)

    async def replay(
        self,
        ids: Iterable[str] | None = None,
        *,
        reason: str | None = None,
        saga_id: str | None = None,
        event_type: str | None = None,
    ) -> list[ParkedMessage]:
        """Send parked messages (all, or those selected) back to their work queues.

        Each goes through the service's retries exchange, where every work queue is bound
        under its own name, never to a delay queue; it keeps its first failure's time and
        counts the replay in ``x-saga-replays``, and starts with a fresh retry budget.

        Raises:
            UnknownMessages: ``ids`` names a message that is not parked; nothing is replayed.
            ReplayFailed: some could not be sent back (they stay parked); the others were.
        """
        selection = _selection(ids, reason, saga_id, event_type)
        taken = await self._take(selection, confirms=True)
        replayed: list[ParkedMessage] = []
        failed: list[tuple[ParkedMessage, str]] = []
        try:
            for part in taken:
                exchange = await self._retries_exchange(part)
                frame_max = frame_max_of(self._connection)
                for message, entry in part.messages:
                    problem = await _send_back(exchange, message, entry, frame_max=frame_max)
                    if problem is None:
                        await message.ack()
                        replayed.append(entry)
                    else:
                        failed.append((entry, problem))
        finally:
            await _release(taken)
        if failed:
            raise ReplayFailed(replayed=replayed, failed=failed)
        return replayed

    async def purge(
        self,
        ids: Iterable[str] | None = None,
        *,
        reason: str | None = None,
        saga_id: str | None = None,
        event_type: str | None = None,
    ) -> int:
        """Delete parked messages (all, or those selected) for good; returns how many."""
        selection = _selection(ids, reason, saga_id, event_type)
        if selection.is_everything:
            return await self._purge_all()
        taken = await self._take(selection)
        removed = 0
        try:
            for part in taken:
                for message, _ in part.messages:
                    await message.ack()
                    removed += 1
        finally:
            await _release(taken)
        return removed

    async def _purge_all(self) -> int:
        removed = 0
        for service in self._services:
            channel = await self._channel()
            try:
                queue = await channel.declare_queue(dead_letter_queue_name(service), passive=True)
                result = await queue.purge()
                removed += int(getattr(result, "message_count", 0) or 0)
            except aio_pika.exceptions.ChannelClosed:
                self._note_missing(service)
            finally:
                if not channel.is_closed:
                    await channel.close()
        self._raise_if_required_missing()
        return removed

    async def _channel(self, *, confirms: bool = False) -> AbstractChannel:
        assert self._connection is not None
        return await self._connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )

    async def _take(self, selection: Selection, *, confirms: bool = False) -> list[_Taken]:
        """Every selected message of every service, held unacked until ``_release``."""
        taken: list[_Taken] = []
        try:
            for service in self._services:
                channel = await self._channel(confirms=confirms)
                part = _Taken(service, channel, [])
                taken.append(part)
                for message in await self._take_all(channel, service):
                    entry = _parked(service, message)
                    if selection.matches(entry):
                        part.messages.append((message, entry))
            self._raise_if_required_missing()
            if selection.ids is not None:
                found = {entry.id for part in taken for _, entry in part.messages}
                if unknown := selection.ids - found:
                    raise UnknownMessages(unknown)
        except BaseException:
            await _release(taken)
            raise
        return taken

    async def _take_all(
        self, channel: AbstractChannel, service: str
    ) -> list[AbstractIncomingMessage]:
        try:
            queue = await channel.declare_queue(dead_letter_queue_name(service), passive=True)
        except aio_pika.exceptions.ChannelClosed:
            self._note_missing(service)  # the service never started here
            return []
        taken: list[AbstractIncomingMessage] = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            taken.append(message)
        return taken

    def _note_missing(self, service: str) -> None:
        if service not in self.missing:
            self.missing.append(service)

    def _raise_if_required_missing(self) -> None:
        if self._required and self.missing:
            raise UnknownService(self.missing)

    async def _retries_exchange(self, part: _Taken) -> AbstractExchange:
        """The service's retries exchange, or the default exchange when it has none."""
        probe = await self._channel()
        try:
            await probe.declare_exchange(retry_exchange_name(part.service), passive=True)
        except aio_pika.exceptions.ChannelClosed:
            # A service from before the retries exchange: straight to the queue.
            return part.channel.default_exchange
        finally:
            if not probe.is_closed:
                await probe.close()
        return await part.channel.get_exchange(retry_exchange_name(part.service), ensure=False)


def _selection(
    ids: Iterable[str] | None, reason: str | None, saga_id: str | None, event_type: str | None
) -> Selection:
    return Selection(
        ids=frozenset(ids) if ids is not None else None,
        reason=reason,
        saga_id=saga_id,
        event_type=event_type,
    )


async def _release(taken: Sequence[_Taken]) -> None:
    # Closing the channel returns every message still unacked to its queue.
    for part in taken:
        if not part.channel.is_closed:
            await part.channel.close()


async def _send_back(
    exchange: AbstractExchange,
    message: AbstractIncomingMessage,
    entry: ParkedMessage,
    *,
    frame_max: int | None,
) -> str | None:
    """Publish ``message`` to its work queue; the problem when it could not be, else None."""
    origin = entry.origin_queue
    if not origin or is_retry_queue(origin) or not origin.startswith(f"{entry.service}."):
        return f"no work queue of {entry.service} to send it to (origin {origin!r})"
    copy = _replayable(message, entry, frame_max=frame_max)
    try:
        await exchange.publish(copy, routing_key=origin, mandatory=True)
    except (aio_pika.exceptions.PublishError, aio_pika.exceptions.DeliveryError) as exc:
        return f"{origin} did not take it ({type(exc).__name__}: {exc})"
    return None


def _replayable(
    message: AbstractIncomingMessage, entry: ParkedMessage, *, frame_max: int | None
) -> aio_pika.Message:
    added: dict[str, Any] = {REPLAYS_HEADER: entry.replays + 1}
    if entry.first_failure_at:
        added[FIRST_FAILURE_HEADER] = entry.first_failure_at
    copy = aio_pika.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    budget = header_budget(copy.properties, body_size=copy.body_size, frame_max=frame_max)
    copy.headers = bounded_headers(
        message.headers or {},
        added,
        budget=budget,
        keep_first=_KEPT_ON_REPLAY,
        leave_out=_NOT_REPLAYED,
    ).headers
    return copy
