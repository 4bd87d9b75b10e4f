"""Runs a participant on a broker: decoding, the compensation rules, retries and parking.

This module is where DESIGN.md §4 is enforced, so that no service has to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

import aio_pika
from faststream import AckPolicy, BaseMiddleware
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitRouter
from pydantic import BaseModel, ValidationError

from sagakit._context import (
    DETAIL_MAX_LENGTH,
    REASON_MAX_LENGTH,
    StepOutcome,
    StepRecord,
    saga_scope,
    utc_now,
)
from sagakit._envelope import SAGA_ID_HEADER, Envelope, EventPayload, derived_event_id
from sagakit._exceptions import InvalidMessage, StepFailed
from sagakit.broker._headers import DEFAULT_FRAME_MAX, bounded_headers, frame_max_of, header_budget
from sagakit.broker._topology import (
    ATTEMPT_HEADER,
    CANCELLED_BY_OPERATOR,
    DEATH_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_ERROR_HEADER,
    OPERATOR_CANCEL_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYS_HEADER,
    ParticipantTopology,
    flow_exchange,
    retry_queue_name,
)
from sagakit.observability._logging import _handling
from sagakit.observability._metrics import (
    DEAD_LETTERED,
    EVENTS_CONSUMED,
    HANDED_BACK,
    HEADERS_DROPPED,
    HELD_DELIVERIES,
    RETRIES,
    STEP_DURATION,
    STEP_OUTCOMES,
)
from sagakit.observability._tracing import (
    current_trace_headers,
    record_outcome,
    record_step_failure,
    step_span,
)
from sagakit.runtime import _rules as rules
from sagakit.runtime._breaker import CircuitBreaker, Dependency, Outage
from sagakit.runtime._faults import CrashPoint, crash_point
from sagakit.runtime._outage import broker_refused
from sagakit.runtime._participant import HandlerKind, Participant, StepContext, Subscription
from sagakit.runtime._relay import OutboxRelay
from sagakit.runtime._settings import ParticipantSettings
from sagakit.spec._checker import emitted_events
from sagakit.spec._spec import StepSpec
from sagakit.store._retention import participant_pruner
from sagakit.store._sql import Transaction
from sagakit.store._store import OutboxRow, StepStatus, Store, body_digest

logger = logging.getLogger("sagakit.runtime")

# Set by the parking middleware, flipped once a handler body starts: an exception before
# that is the message's fault (undecodable, schema-invalid); after it, the service's.
_handler_started: ContextVar[list[bool] | None] = ContextVar("sagakit_started", default=None)
# The delivery being handled, also set by the parking middleware: a handler that asked
# FastStream for it (a ``RabbitMessage`` parameter) would have it resolved on a worker
# thread, a thread switch per message.
_delivery: ContextVar[StreamMessage[Any] | None] = ContextVar("sagakit_delivery", default=None)

# Declaring the topology at start-up outlasts a broker that is away for about this long.
_DECLARE_ATTEMPTS = 60
_DECLARE_PAUSE_SECONDS = 1.0

# An error that is neither the message's fault nor an outage (a bug) sends the message back
# after a pause; the quorum queue's delivery limit stops it from looping forever. Outages
# never take this path: the breaker holds their deliveries (_breaker.py).
_REQUEUE_PAUSE_SECONDS = 1.0
# A probe of the store or the broker that takes longer than this has failed.
_PROBE_TIMEOUT_SECONDS = 5.0
# The event ids a delivery's transactions wrote, held from the relay loop until the
# delivery is done with them (published, or left to the loop).
_written: ContextVar[list[str] | None] = ContextVar("sagakit_written", default=None)
# Properties besides headers (ids, type, content type, flags) take less than this.
_PROPERTIES_ALLOWANCE = 512
# The header a quorum queue adds on redelivery; a handed-back copy starts afresh.
_DELIVERY_COUNT_HEADER = "x-delivery-count"

# A republished message (retry, park) carries these of its headers first, before any other
# header of the message's own: sagakit and the tracing read them.
_KEPT_HEADERS = (
    SAGA_ID_HEADER,
    "traceparent",
    "tracestate",
    "baggage",
    OPERATOR_CANCEL_HEADER,
    ATTEMPT_HEADER,
    REPLAYS_HEADER,
    DEATH_HEADER,
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
)
# Never carried over: what only a park may say, and the broker's count of the old queue.
_LEFT_OUT = (REASON_HEADER, ORIGIN_QUEUE_HEADER, PARKED_AT_HEADER, "x-delivery-count")
_MAX_REASON_CHARS = 1000
_MAX_TIME_CHARS = 64


class _RetryableError(Exception):
    """A handler failed in a way that may pass: retry through the delay queue."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class _EventTooLarge(Exception):
    """An event the handling would emit is larger than any consumer takes."""

    def __init__(self, event_type: str, size: int, limit: int, what: str) -> None:
        super().__init__(f"{event_type} would be {size} bytes ({what}), over the limit of {limit}")
        self.event_type = event_type


class SagaRuntime:
    """Binds a Participant to a RabbitBroker and a Store, and enforces the saga rules."""

    def __init__(
        self,
        participant: Participant,
        *,
        broker: RabbitBroker,
        store: Store,
        settings: ParticipantSettings,
    ) -> None:
        self.participant = participant
        self.spec = participant.spec
        self.broker = broker
        self.store = store
        self.settings = settings
        self.topology = ParticipantTopology(
            participant.name, self.spec.exchange, delivery_limit=settings.delivery_limit
        )
        self.exchange = flow_exchange(self.spec.exchange)
        self.subscriptions = participant.subscriptions()
        self.breaker = CircuitBreaker(
            participant.name,
            probes={Dependency.STORE: self._probe_store, Dependency.BROKER: self._probe_broker},
            probe_timeout=_PROBE_TIMEOUT_SECONDS,
            max_probe_delay=settings.outage_probe_max_delay_seconds,
        )
        self.relay = OutboxRelay(
            store,
            broker,
            self.exchange,
            participant=participant.name,
            interval=settings.relay_interval_seconds,
            breaker=self.breaker,
        )
        # A start event must leave room for the saga's history and the fields each step
        # adds: every later event carries it, and must stay within the limit too.
        self._start_event_limit = settings.max_message_bytes - min(
            16 * 1024, settings.max_message_bytes // 4
        )
        self.pruner = participant_pruner(store, settings, service=participant.name)
        # A router of its own, so that the parking middleware guards sagakit's subscribers
        # and nothing else that shares the broker.
        self._router = RabbitRouter(middlewares=[_parking_middleware(self)])
        for sub in self.subscriptions:
            self._subscribe(sub)
        self._document_emitted_events()
        broker.include_router(self._router)

    @property
    def name(self) -> str:
        """The participant's name."""
        return self.participant.name

    # -- lifecycle ---------------------------------------------------------------------

    async def declare_topology(self) -> None:
        """Declare the dead-letter exchange and queue and the delay queues."""
        dlx = await self.broker.declare_exchange(self.topology.dead_letter_exchange())
        dlq = await self.broker.declare_queue(self.topology.dead_letter_queue())
        await dlq.bind(dlx, routing_key="#")
        retries = await self.broker.declare_exchange(self.topology.retry_exchange())
        for sub in self.subscriptions:
            delay = await self.broker.declare_queue(self.topology.retry_queue(sub.event_type))
            await delay.bind(retries, routing_key=delay.name)
            work = await self.broker.declare_queue(self.topology.work_queue(sub.event_type))
            await work.bind(retries, routing_key=work.name)

    async def start(self, *, declare: bool = True) -> None:
        """Declare what FastStream does not, then start the outbox relay and pruning.

        A connection lost while declaring (a broker restart, a network blip) is waited out
        instead of ending the process: the robust connection comes back, and declaring
        again is harmless.
        """
        if declare:
            await self._declare_topology_patiently()
        self.relay.start()
        self.pruner.start()

    async def _declare_topology_patiently(self) -> None:
        for attempt in range(1, _DECLARE_ATTEMPTS + 1):
            try:
                await self.declare_topology()
                return
            # aiormq: connection errors are ConnectionErrors, a closed channel a RuntimeError.
            except (ConnectionError, RuntimeError) as exc:
                if attempt == _DECLARE_ATTEMPTS:
                    raise
                logger.warning("declaring the topology failed (%r), trying again", exc)
                await asyncio.sleep(_DECLARE_PAUSE_SECONDS)

    async def stop(self) -> None:
        """Hand held deliveries back to their queues; stop pruning and the outbox relay."""
        await self.breaker.stop()
        await self.pruner.stop()
        await self.relay.stop()

    async def _probe_store(self) -> None:
        # Connections opened during the outage may be useless after it (SQLite opens a file
        # it cannot write read-only, for good; a PostgreSQL standby stays one): each probe
        # starts from an empty pool, so the connections after the outage are new ones.
        await self.store.dispose()
        await self.store.probe()

    async def _probe_broker(self) -> None:
        if not await self.broker.ping(timeout=_PROBE_TIMEOUT_SECONDS / 2):
            raise ConnectionError("the broker does not answer")

    # -- subscribing -------------------------------------------------------------------

    def _subscribe(self, sub: Subscription) -> None:
        model = self.spec.model_for(sub.event_type)

        async def handle(envelope: Any) -> None:
            message = _delivery.get()
            assert message is not None, "the parking middleware sets the delivery"
            await self._handle(sub, envelope, message)

        # FastStream validates the body against this annotation, and documents it in AsyncAPI.
        handle.__annotations__ = {
            "envelope": Envelope[model],  # type: ignore[valid-type]
            "return": None,
        }
        handle.__name__ = handle.__qualname__ = f"{sub.kind.value}_{sub.name}_on_{sub.event_type}"
        self._router.subscriber(
            self.topology.work_queue(sub.event_type),
            self.exchange,
            ack_policy=AckPolicy.MANUAL,
            decoder=_decode_json,
            # Events are never RPC requests: a reply_to set by the sender must not make the
            # service publish to a queue of the sender's choosing.
            no_reply=True,
            title=sub.queue,
            description=f"{self.name}: {sub.kind.value} {sub.name!r} on {sub.event_type}",
        )(handle)

    def _document_emitted_events(self) -> None:
        # The outbox relay publishes what a participant emits, not FastStream publishers:
        # these are never published through; they put the emitted events into AsyncAPI.
        for event_type in emitted_events(self.spec, self.name):
            self._router.publisher(
                exchange=self.exchange,
                routing_key=event_type,
                persist=True,
                title=f"{self.name}.emits.{event_type}",
                description=f"{self.name} emits {event_type}",
                schema=Envelope[self.spec.model_for(event_type)],  # type: ignore[misc]
            )

    # -- handling ----------------------------------------------------------------------

    async def _handle(self, sub: Subscription, envelope: Envelope[Any], message: Any) -> None:
        started = _handler_started.get()
        if started is not None:
            started.append(True)
        self._check(sub, envelope, message.body)
        EVENTS_CONSUMED.labels(self.name, sub.event_type).inc()
        attempt = _attempt(message.headers)
        digest = body_digest(message.body)
        began = time.perf_counter()
        token = _handling.set((sub.event_type, sub.name))
        written: list[str] = []
        written_token = _written.set(written)
        try:
            with (
                saga_scope(envelope.context),
                step_span(
                    f"{sub.kind.value} {sub.name}",
                    saga=envelope.context,
                    step=sub.name,
                    participant=self.name,
                    parent=message.headers,
                ) as span,
            ):
                span.set_attribute("saga.handler", sub.kind.value)
                span.set_attribute("messaging.message.id", str(envelope.event_id))
                handled = await self._outcome(sub, envelope, message, attempt, digest, span)
                if handled is None:
                    return  # handed back to its queue, or taken back by the broker
                rows, outcome = handled
                record_outcome(span, outcome)
                STEP_OUTCOMES.labels(self.name, sub.name, sub.kind.value, outcome).inc()
                crash_point(CrashPoint.BEFORE_PUBLISH, sub.event_type)
                if not await self._publish(sub, message, rows):
                    return  # committed: the relay loop publishes the events
                crash_point(CrashPoint.BEFORE_ACK, sub.event_type)
                if outcome not in {"retry", "parked"}:
                    await message.ack()
        finally:
            self.relay.release(written)
            _written.reset(written_token)
            _handling.reset(token)
            STEP_DURATION.labels(self.name, sub.name, sub.kind.value).observe(
                time.perf_counter() - began
            )

    def _check(self, sub: Subscription, envelope: Envelope[Any], body: bytes) -> None:
        model = self.spec.model_for(sub.event_type)
        if envelope.event_type != sub.event_type:
            raise InvalidMessage(
                f"unexpected_event_type: {envelope.event_type!r} arrived on {sub.queue}"
            )
        if envelope.schema_version != model.schema_version:
            raise InvalidMessage(
                f"unsupported_schema_version: {envelope.event_type} v{envelope.schema_version}"
                f" (this consumer reads v{model.schema_version})"
            )
        if envelope.context.saga_type != self.spec.saga_type:
            raise InvalidMessage(f"unknown_saga_type: {envelope.context.saga_type!r}")
        if envelope.event_type == self.spec.start_event:
            # A saga starts with no history: steps in a start event could only be invented,
            # and every later event would carry them.
            if envelope.context.steps:
                raise InvalidMessage(
                    f"start_event_with_steps: {envelope.event_type} must arrive with empty"
                    f" context.steps (it has {len(envelope.context.steps)})"
                )
            if len(body) > self._start_event_limit:
                raise InvalidMessage(
                    f"too_large: a start event may take {self._start_event_limit} bytes, to"
                    f" leave room for the saga's history; this one has {len(body)}"
                )

    # -- outages -----------------------------------------------------------------------

    async def _outcome(
        self,
        sub: Subscription,
        envelope: Envelope[Any],
        message: Any,
        attempt: int,
        digest: str,
        span: Any,
    ) -> tuple[list[OutboxRow], str] | None:
        """Handle the delivery; while the store or the broker is away, hold it and run it
        again once the dependency answers. None: the delivery is no longer ours."""
        while True:
            if not await self._admit(sub, message):
                return None
            try:
                try:
                    return await self._dispatch(sub, envelope, attempt, digest)
                except _RetryableError as retry:
                    span.record_exception(retry.cause)
                    return await self._after_transient(
                        sub, envelope, message, attempt, retry, digest
                    )
            except Outage as outage:
                # Nothing was committed: the delivery runs again, as if it had just arrived,
                # and no attempt is counted.
                self.breaker.trip(outage.dependency, outage.cause)
                if self.breaker.stopping:
                    await self._hand_back(sub, message)
                    return None
                if _delivery_lost(message):
                    return None

    async def _admit(self, sub: Subscription, message: Any) -> bool:
        """Wait while the breaker holds deliveries; False if this one is no longer ours
        (handed back to its queue, or taken back by the broker with a lost connection)."""
        if not self.breaker.is_open:
            return True
        HELD_DELIVERIES.labels(self.name).inc()
        try:
            while not await self.breaker.wait_closed(at_most=self.settings.outage_hold_seconds):
                # Held too long (or the service stops): back to the queue, with no attempt
                # counted, before RabbitMQ's consumer timeout closes the channel.
                if await self._hand_back(sub, message):
                    return False
                if self.breaker.stopping:
                    return False
        finally:
            HELD_DELIVERIES.labels(self.name).dec()
        return not _delivery_lost(message)

    async def _hand_back(self, sub: Subscription, message: Any) -> bool:
        """Put a held delivery back at the end of its queue, then ack it: a publish, not a
        requeue, so the quorum queue's delivery count does not grow."""
        raw = message.raw_message
        original: Mapping[str, Any] = getattr(raw, "headers", None) or message.headers or {}
        handed = aio_pika.Message(
            bytes(message.body),
            content_type=getattr(raw, "content_type", None),
            content_encoding=getattr(raw, "content_encoding", None),
            correlation_id=getattr(raw, "correlation_id", None),
            message_id=getattr(raw, "message_id", None),
            timestamp=getattr(raw, "timestamp", None),
            type=getattr(raw, "type", None),
            app_id=getattr(raw, "app_id", None),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        budget = header_budget(
            handed.properties,
            body_size=handed.body_size,
            frame_max=frame_max_of(getattr(self.broker, "_connection", None)),
        )
        # The same headers (as many as the frame takes, as a retry carries them), without
        # the broker's count of deliveries: the copy starts afresh.
        handed.headers = bounded_headers(
            original,
            {},
            budget=budget,
            keep_first=_KEPT_HEADERS,
            leave_out=(_DELIVERY_COUNT_HEADER,),
        ).headers
        try:
            await self.broker.publish(
                handed,
                exchange=self.topology.retry_exchange(),
                routing_key=sub.queue,
                mandatory=True,
                timeout=_PROBE_TIMEOUT_SECONDS,
            )
            await message.ack()
        except Exception as exc:
            logger.warning("could not hand back a held delivery (%s); holding it on", exc)
            return False
        HANDED_BACK.labels(self.name).inc()
        logger.info("held delivery %s handed back to %s", message.message_id, sub.queue)
        return True

    async def _publish(self, sub: Subscription, message: Any, rows: list[OutboxRow]) -> bool:
        """Publish the committed rows; while the broker refuses them, hold the delivery
        unacknowledged. False if the delivery is no longer ours (the events stay in the
        outbox, where the relay loop finds them)."""
        pending = rows
        while pending:
            published = await self.relay.publish(pending)
            if not published.unpublished or published.refusal is None:
                return True  # confirmed, or unroutable: the relay loop tries those again
            pending = published.unpublished
            if self.breaker.stopping:
                await self._hand_back(sub, message)
                return False
            if not await self._admit(sub, message):
                return False
        return True

    async def _store_outage(self, error: Exception) -> Outage | None:
        if await self.breaker.store_away(error):
            return Outage(Dependency.STORE, error)
        return None

    async def _dispatch(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> tuple[list[OutboxRow], str]:
        try:
            if sub.kind is HandlerKind.STEP:
                return await self._run_step(sub, envelope, attempt, digest)
            if sub.kind is HandlerKind.COMPENSATION:
                return await self._run_compensation(sub, envelope, attempt, digest)
            return await self._run_reaction(sub, envelope, attempt, digest)
        except (_RetryableError, InvalidMessage, Outage):
            raise
        except Exception as exc:
            # The store the runtime needs is not the step's to fail on: whether the error
            # came from sagakit's statements or the handler's own, on the store.
            outage = await self._store_outage(exc)
            if outage is not None:
                raise outage from exc
            raise _RetryableError(exc) from exc

    async def _after_transient(
        self,
        sub: Subscription,
        envelope: Envelope[Any],
        message: Any,
        attempt: int,
        retry: _RetryableError,
        digest: str,
    ) -> tuple[list[OutboxRow], str]:
        budget = (
            self.settings.compensation_retry_budget
            if sub.kind is HandlerKind.COMPENSATION
            else self.settings.step_retry_budget
        )
        if attempt < budget:
            logger.warning(
                "transient failure (attempt %d of %d): %s", attempt + 1, budget + 1, retry
            )
            try:
                await self._schedule_retry(sub, message, attempt + 1, str(retry))
            except Exception as exc:
                if broker_refused(exc):
                    raise Outage(Dependency.BROKER, exc) from exc
                raise
            return [], "retry"
        if sub.kind is HandlerKind.STEP:
            assert sub.step is not None
            logger.warning("retries exhausted, failing the step: %s", retry)
            failure = StepFailed("retries_exhausted", detail=type(retry.cause).__name__)
            try:
                return await self._record_failure(sub, sub.step, envelope, failure, digest)
            except (InvalidMessage, Outage):
                raise
            except Exception as exc:
                # Recording the failure needs the store: an outage here is held like any.
                outage = await self._store_outage(exc)
                if outage is not None:
                    raise outage from exc
                raise
        logger.error(
            "%s %r still fails after %d retries, parking: %s",
            sub.kind.value,
            sub.name,
            budget,
            retry,
        )
        try:
            await self.park(
                message,
                queue=sub.queue,
                reason=f"{sub.kind.value}_failed: {retry}",
                kind=sub.kind.value,
            )
        except Exception as exc:
            if broker_refused(exc):
                raise Outage(Dependency.BROKER, exc) from exc
            raise
        return [], "parked"

    # -- the three kinds of handler ----------------------------------------------------

    async def _run_step(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> tuple[list[OutboxRow], str]:
        step = sub.step
        assert step is not None
        saga_id = envelope.context.saga_id
        try:
            async with self.store.write() as transaction:
                if not await self._first_delivery(transaction, sub, envelope, digest):
                    return await self._unsent(transaction, envelope), "duplicate"
                status = await self.store.claim_step(transaction, step=step.name, saga_id=saga_id)
                decision = rules.on_forward(
                    status, past_deadline=envelope.context.is_past_deadline()
                )
                if decision is rules.ForwardDecision.IGNORE:
                    logger.info("step already %s: forward event ignored", status)
                    return [], "ignored"
                if decision is rules.ForwardDecision.FAIL_DEADLINE:
                    raise StepFailed("deadline_exceeded", detail="the saga's deadline has passed")
                if _cancelled_by_operator(_delivery.get()):
                    # The operator's copy of the trigger (client/_steering.py): the step
                    # fails here, by this participant, so every rule holds as for any
                    # failure; the original, if it comes later, is a duplicate.
                    raise StepFailed(CANCELLED_BY_OPERATOR, detail="cancelled by an operator")
                result = await self._call(sub, envelope, transaction, attempt)
                self._expect(result, step.success)
                record = self._record(step, StepOutcome.COMPLETED)
                success = self._envelope(result, cause=envelope, record=record)
                await self.store.set_step_status(
                    transaction, step=step.name, saga_id=saga_id, status=StepStatus.COMPLETED
                )
                return await self._emit(transaction, [success]), "completed"
        except StepFailed as failure:
            return await self._record_failure(sub, step, envelope, failure, digest)
        except _EventTooLarge as too_large:
            # Nobody could take the event: the step's effects are rolled back with it, and
            # the step fails so that the saga is undone instead of stranded.
            logger.warning("the step's event is too large, failing the step: %s", too_large)
            oversized = StepFailed("event_too_large", detail=str(too_large))
            return await self._record_failure(sub, step, envelope, oversized, digest)

    async def _record_failure(
        self,
        sub: Subscription,
        step: StepSpec,
        envelope: Envelope[Any],
        failure: StepFailed,
        digest: str,
    ) -> tuple[list[OutboxRow], str]:
        """In a fresh transaction (the step's own writes are gone): mark failed, emit failure."""
        reason = failure.reason[:REASON_MAX_LENGTH]
        try:
            return await self._write_failure(sub, step, envelope, reason, failure.detail, digest)
        except _EventTooLarge:
            pass
        try:
            # The failure event carries what the incoming event carried, plus a reason and
            # a detail: without the detail, it is at most a record larger than that event.
            return await self._write_failure(sub, step, envelope, reason, "", digest)
        except _EventTooLarge as too_large:
            # Not even the failure can be announced: nothing is done, the message is parked.
            raise InvalidMessage(f"event_too_large: {too_large}") from too_large

    async def _write_failure(
        self,
        sub: Subscription,
        step: StepSpec,
        envelope: Envelope[Any],
        reason: str,
        detail: str,
        digest: str,
    ) -> tuple[list[OutboxRow], str]:
        saga_id = envelope.context.saga_id
        async with self.store.write() as transaction:
            if not await self._first_delivery(transaction, sub, envelope, digest):
                return await self._unsent(transaction, envelope), "duplicate"
            claimed = await self.store.claim_step(transaction, step=step.name, saga_id=saga_id)
            if claimed is not None:
                return [], "ignored"
            record = self._record(step, StepOutcome.FAILED, reason=reason)
            payload = self._system_payload(
                step.failure, envelope, reason=reason, detail=detail[:DETAIL_MAX_LENGTH]
            )
            failed = self._envelope(payload, cause=envelope, record=record)
            events = [failed]
            if self.spec.is_first(step):
                events.append(self._cancellation(failed, step.name, reason))
            await self.store.set_step_status(
                transaction,
                step=step.name,
                saga_id=saga_id,
                status=StepStatus.FAILED,
                reason=reason,
            )
            rows = await self._emit(transaction, events)
            logger.info("step failed: %s", reason)
            record_step_failure(reason)
            return rows, "failed"

    async def _run_compensation(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> tuple[list[OutboxRow], str]:
        try:
            return await self._compensate(sub, envelope, attempt, digest)
        except _EventTooLarge as too_large:
            # A compensation cannot fail as a business failure (there is no way further
            # back): undoing the step without announcing it would stop the backward path
            # with the earlier steps still done. So nothing is undone, and the request is
            # parked with the reason; with a larger limit it can be replayed.
            raise InvalidMessage(f"event_too_large: {too_large}") from too_large

    async def _compensate(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> tuple[list[OutboxRow], str]:
        step = sub.step
        assert step is not None
        assert step.compensated is not None
        saga_id = envelope.context.saga_id
        async with self.store.write() as transaction:
            if not await self._first_delivery(transaction, sub, envelope, digest):
                return await self._unsent(transaction, envelope), "duplicate"
            status = await self.store.claim_step(transaction, step=step.name, saga_id=saga_id)
            decision = rules.on_compensation(status)
            if decision is rules.CompensationDecision.UNKNOWN_SAGA:
                # Rolled back with the claim: the saga stays unknown here (_rules.py says why).
                raise InvalidMessage(
                    f"unknown_saga: {envelope.event_type} asks {self.name} to undo"
                    f" {step.name!r} for saga {saga_id}, of which {self.name} has no record"
                )
            if decision is rules.CompensationDecision.IGNORE:
                logger.warning("compensation requested for a step that failed itself: ignored")
                return [], "ignored"
            record = self._record(step, StepOutcome.COMPENSATED)
            if decision is rules.CompensationDecision.UNDO:
                result = await self._call(sub, envelope, transaction, attempt)
                self._expect(result, step.compensated)
                crash_point(CrashPoint.MID_COMPENSATION, sub.event_type)
            else:
                # Nothing to undo, but the backward path must go on: announce the compensated
                # event (an event announced before keeps its id and body, so consumers dedupe).
                result = self._system_payload(step.compensated, envelope)
                logger.info("compensation is a no-op (%s)", decision.value)
            outcome = (
                "compensated" if decision is rules.CompensationDecision.UNDO else decision.value
            )
            compensated = self._envelope(result, cause=envelope, record=record)
            events = [compensated]
            if self.spec.is_first(step):
                failure = envelope.context.last_failure()
                events.append(
                    self._cancellation(
                        compensated,
                        failure.step if failure else "unknown",
                        (failure.reason or "unknown") if failure else "unknown",
                    )
                )
            await self.store.set_step_status(
                transaction, step=step.name, saga_id=saga_id, status=StepStatus.COMPENSATED
            )
            return await self._emit(transaction, events), outcome

    async def _run_reaction(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> tuple[list[OutboxRow], str]:
        async with self.store.write() as transaction:
            if not await self._first_delivery(transaction, sub, envelope, digest):
                return [], "duplicate"
            await self._call(sub, envelope, transaction, attempt)
        return [], "handled"

    async def _call(
        self, sub: Subscription, envelope: Envelope[Any], transaction: Transaction, attempt: int
    ) -> Any:
        # asyncio.timeout rather than wait_for, which runs every handler in a task of its own.
        async with asyncio.timeout(self.settings.step_timeout_seconds):
            return await sub.handler(
                envelope.payload, self._step_context(transaction, envelope, attempt)
            )

    # -- building events ---------------------------------------------------------------

    async def _first_delivery(
        self, transaction: Transaction, sub: Subscription, envelope: Envelope[Any], digest: str
    ) -> bool:
        message_id = str(envelope.event_id)
        first = await self.store.remember_message(
            transaction,
            consumer=sub.queue,
            message_id=message_id,
            saga_id=envelope.context.saga_id,
            body_digest=digest,
        )
        if first:
            return True
        # Every copy sagakit sends of an event (a retry, a re-announcement, a replay) is
        # the same bytes: another body under a known id is another event, not a duplicate.
        recorded = await self.store.remembered_digest(
            transaction, consumer=sub.queue, message_id=message_id
        )
        if recorded is not None and recorded != digest:
            raise InvalidMessage(
                f"conflicting_duplicate: event {message_id} was handled before with another"
                " body; this one was not applied"
            )
        logger.info("duplicate delivery of %s ignored", envelope.event_id)
        return False

    async def _unsent(self, transaction: Transaction, envelope: Envelope[Any]) -> list[OutboxRow]:
        """On a duplicate delivery, the saga's events still unmarked: when the first delivery
        committed and then died before publishing (or before its marks), this one publishes
        them now, instead of the relay loop later. Rows another delivery holds are left to it.
        """
        rows = await self.store.unsent_of_saga(transaction, saga_id=envelope.context.saga_id)
        rows = [row for row in rows if not self.relay.in_hand(row.event_id)]
        written = _written.get()
        if rows and written is not None:
            ids = [row.event_id for row in rows]
            self.relay.hold(ids)
            written.extend(ids)
        return rows

    def _step_context(
        self, transaction: Transaction, envelope: Envelope[Any], attempt: int
    ) -> StepContext:
        return StepContext(
            transaction=transaction,
            saga=envelope.context,
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            attempt=attempt,
            failure=envelope.context.last_failure(),
        )

    def _record(
        self, step: StepSpec, outcome: StepOutcome, reason: str | None = None
    ) -> StepRecord:
        return StepRecord(
            step=step.name, participant=self.name, outcome=outcome, at=utc_now(), reason=reason
        )

    def _expect(self, result: object, event_type: str) -> None:
        expected = self.spec.model_for(event_type)
        if not isinstance(result, expected):
            raise TypeError(
                f"handler returned {type(result).__name__}, expected {expected.__name__}"
            )

    def _carried(self, envelope: Envelope[Any]) -> dict[str, Any]:
        carry = self.spec.carry
        if carry is None:
            return {}
        if envelope.event_type == self.spec.start_event:
            return {carry: envelope.payload.model_dump(mode="json")}
        value = getattr(envelope.payload, carry, None)
        return {carry: value.model_dump(mode="json")} if isinstance(value, BaseModel) else {}

    def _system_payload(
        self, event_type: str, envelope: Envelope[Any], **fields: Any
    ) -> EventPayload:
        model = self.spec.model_for(event_type)
        return model.model_validate({**self._carried(envelope), **fields})

    def _envelope(
        self, payload: EventPayload, *, cause: Envelope[Any], record: StepRecord | None
    ) -> Envelope[Any]:
        context = cause.context.followed_by(cause.event_id, record)
        return Envelope.new(
            payload,
            context=context,
            producer=self.name,
            event_id=derived_event_id(context.saga_id, self.name, payload.event_type),
        )

    def _cancellation(self, cause: Envelope[Any], failed_step: str, reason: str) -> Envelope[Any]:
        payload = self._system_payload(
            self.spec.cancelled_event, cause, failed_step=failed_step, reason=reason
        )
        return self._envelope(payload, cause=cause, record=None)

    async def _emit(
        self, transaction: Transaction, events: Sequence[Envelope[Any]]
    ) -> list[OutboxRow]:
        trace_headers = current_trace_headers()
        rows = [
            OutboxRow(
                event_id=str(e.event_id),
                saga_id=str(e.context.saga_id),
                routing_key=e.event_type,
                body=e.encode().decode(),
                properties=_json_properties(e),
                headers={**e.amqp_headers(), **trace_headers},
            )
            for e in events
        ]
        for row in rows:
            self._check_size(row)
        queued = await self.store.add_to_outbox(transaction, rows)
        # From now until the delivery is done with them, the relay loop leaves these alone.
        written = _written.get()
        if written is not None:
            ids = [row.event_id for row in queued]
            self.relay.hold(ids)
            written.extend(ids)
        return queued

    def _check_size(self, row: OutboxRow) -> None:
        """Refuse, before anything commits, an event no consumer could take."""
        body = len(row.body) if row.body.isascii() else len(row.body.encode())
        headers = _table_size(row.headers)
        limit = self.settings.max_message_bytes
        if body + headers > limit:
            raise _EventTooLarge(
                row.routing_key, body + headers, limit, f"{body} of body, {headers} of headers"
            )
        # A message's properties and headers travel in one frame.
        frame_max = frame_max_of(getattr(self.broker, "_connection", None)) or DEFAULT_FRAME_MAX
        if headers + _PROPERTIES_ALLOWANCE > frame_max:
            raise _EventTooLarge(
                row.routing_key, headers, frame_max, "headers, over the broker's frame size"
            )

    # -- retry and parking -------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self.settings.retry_max_delay_seconds,
            self.settings.retry_base_delay_seconds * 2 ** (attempt - 1),
        )
        return random.uniform(ceiling / 2, ceiling)

    async def _schedule_retry(
        self, sub: Subscription, message: Any, attempt: int, error: str
    ) -> None:
        await self._republish(
            message,
            exchange=self.topology.retry_exchange(),
            routing_key=retry_queue_name(sub.queue),
            headers={ATTEMPT_HEADER: attempt, LAST_ERROR_HEADER: error[:300]},
            expiration=timedelta(seconds=self._backoff(attempt)),
        )
        RETRIES.labels(self.name, sub.name).inc()

    async def park(
        self, message: StreamMessage[Any], *, queue: str, reason: str, kind: str
    ) -> None:
        """Move ``message`` to the dead-letter queue with ``reason`` in its headers, then ack.

        When the message's own headers do not fit beside sagakit's in one frame, the
        reason says how many were dropped (``headers_too_large: N headers dropped``).
        """
        reason = reason[:_MAX_REASON_CHARS]
        await self._republish(
            message,
            exchange=self.topology.dead_letter_exchange(),
            routing_key=queue,
            headers={
                REASON_HEADER: reason,
                ORIGIN_QUEUE_HEADER: queue,
                PARKED_AT_HEADER: utc_now().isoformat(),
            },
            reason=reason,
        )
        DEAD_LETTERED.labels(self.name, kind).inc()

    async def _republish(
        self,
        message: Any,
        *,
        exchange: RabbitExchange,
        routing_key: str,
        headers: Mapping[str, Any],
        expiration: timedelta | None = None,
        reason: str | None = None,
    ) -> None:
        # The same body and properties as they came on the wire, the given headers added,
        # confirmed; then the original is acked, so the message is never in neither place.
        # The header table is bounded so that the broker always accepts the publish.
        raw = message.raw_message
        original: Mapping[str, Any] = getattr(raw, "headers", None) or message.headers or {}
        added = dict(headers)
        added[FIRST_FAILURE_HEADER] = _first_failure(original)
        republished = aio_pika.Message(
            bytes(message.body),
            content_type=getattr(raw, "content_type", None),
            content_encoding=getattr(raw, "content_encoding", None),
            correlation_id=getattr(raw, "correlation_id", None),
            message_id=getattr(raw, "message_id", None),
            timestamp=getattr(raw, "timestamp", None),
            type=getattr(raw, "type", None),
            app_id=getattr(raw, "app_id", None),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            expiration=expiration,
        )
        budget = header_budget(
            republished.properties,
            body_size=republished.body_size,
            frame_max=frame_max_of(getattr(self.broker, "_connection", None)),
        )
        bounded = bounded_headers(
            original, added, budget=budget, keep_first=_KEPT_HEADERS, leave_out=_LEFT_OUT
        )
        if bounded.reason is not None:
            logger.warning("message %.80r: %s", getattr(raw, "message_id", None), bounded.note)
            HEADERS_DROPPED.labels(self.name).inc(len(bounded.dropped))
            if reason is not None:
                suffix = f"; {bounded.reason}"
                kept = reason[: _MAX_REASON_CHARS - len(suffix)]
                bounded.headers[REASON_HEADER] = f"{kept}{suffix}"
        republished.headers = bounded.headers
        await self.broker.publish(
            republished, exchange=exchange, routing_key=routing_key, mandatory=True
        )
        await message.ack()

    def origin_queue(self, message: StreamMessage[Any]) -> str:
        """The work queue a raw message came from (its routing key names it or its type)."""
        routing_key = str(getattr(message.raw_message, "routing_key", "") or "")
        if routing_key.startswith(f"{self.name}."):
            return routing_key
        return self.topology.work_queue(routing_key or "unknown").name


async def _decode_json(message: StreamMessage[Any]) -> Any:
    # The body is JSON whatever content type a foreign client did or did not set.
    return json.loads(message.body)


def _first_failure(headers: Mapping[str, Any]) -> str:
    """The first failure's time the message carries, or now for its first failure."""
    value = headers.get(FIRST_FAILURE_HEADER)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str) and 0 < len(value) <= _MAX_TIME_CHARS:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass  # not a time sagakit wrote: a first failure is now
        else:
            return value
    return utc_now().isoformat()


def _table_size(headers: Mapping[str, str]) -> int:
    """Bytes of an AMQP field table of short string keys and long string values."""
    return 4 + sum(
        1 + len(key.encode()) + 1 + 4 + len(str(value).encode()) for key, value in headers.items()
    )


def _delivery_lost(message: Any) -> bool:
    """True when the channel the delivery came on has closed: the broker took the message
    back (it comes again), and acking it is no longer possible."""
    channel = getattr(message.raw_message, "_IncomingMessage__channel", None)
    return getattr(channel, "is_closed", False) is True


def _cancelled_by_operator(message: StreamMessage[Any] | None) -> bool:
    return message is not None and bool(message.headers.get(OPERATOR_CANCEL_HEADER))


def _attempt(headers: Mapping[str, Any]) -> int:
    try:
        return max(0, int(headers.get(ATTEMPT_HEADER, 0) or 0))
    except (TypeError, ValueError):
        return 0


def _json_properties(envelope: Envelope[Any]) -> dict[str, Any]:
    props = envelope.amqp_properties()
    for key in ("persist", "mandatory", "timestamp"):
        props.pop(key, None)
    return props


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidMessage):
        return exc.reason
    if isinstance(exc, ValidationError):
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        return f"schema_invalid: {errors}"
    if isinstance(exc, UnicodeDecodeError | ValueError):
        return f"undecodable: {type(exc).__name__}: {str(exc)[:200]}"
    return f"unprocessable: {type(exc).__name__}: {str(exc)[:200]}"


def _parking_middleware(runtime: SagaRuntime) -> Callable[..., BaseMiddleware]:
    class ParkBadInput(BaseMiddleware):
        """Parks what cannot be decoded; requeues, after a pause, what failed for our sake."""

        async def consume_scope(
            self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            if len(msg.body) > runtime.settings.max_message_bytes:
                reason = f"too_large: {len(msg.body)} bytes"
                await _park_logged(runtime, msg, runtime.origin_queue(msg), reason)
                return None
            started: list[bool] = []
            token = _handler_started.set(started)
            delivery = _delivery.set(msg)
            try:
                return await call_next(msg)
            except InvalidMessage as exc:
                await _park_logged(runtime, msg, runtime.origin_queue(msg), exc.reason)
            except Exception as exc:
                if not started:
                    await _park_logged(runtime, msg, runtime.origin_queue(msg), _describe(exc))
                    return None
                logger.exception("handling failed for an infrastructure reason; requeueing")
                await asyncio.sleep(_REQUEUE_PAUSE_SECONDS)
                await msg.nack()  # RabbitMessage.nack requeues by default
            finally:
                _delivery.reset(delivery)
                _handler_started.reset(token)
            return None

    return ParkBadInput


async def _park_logged(
    runtime: SagaRuntime, msg: StreamMessage[Any], queue: str, reason: str
) -> None:
    # The id as it came on the wire: FastStream makes one up for a message without any.
    message_id = getattr(msg.raw_message, "message_id", None)
    logger.warning("parking message %.80r from %s: %s", message_id, queue, reason)
    await runtime.park(msg, queue=queue, reason=reason, kind="bad_input")
