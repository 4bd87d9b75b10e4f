"""One valid delivery, from its checks to its ack: run its handler (step, compensation or
reaction), retry or park on failure, hold it through an outage, publish what it committed."""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.trace import Span

from sagakit._context import DeliveryScope
from sagakit._envelope import Envelope
from sagakit._exceptions import BusinessFailure, InvalidMessage
from sagakit.observability._metrics import (
    EVENTS_CONSUMED,
    HELD_DELIVERIES,
    STEP_DURATION,
    STEP_OUTCOMES,
)
from sagakit.observability._tracing import record_outcome, step_span
from sagakit.runtime._breaker import CircuitBreaker, Dependency, Outage
from sagakit.runtime._compensation import Compensation
from sagakit.runtime._faults import CrashPoint, crash_point
from sagakit.runtime._forward import ForwardStep
from sagakit.runtime._handlers import call_handler, first_delivery
from sagakit.runtime._outage import broker_refused
from sagakit.runtime._outcome import Handled, Outcome
from sagakit.runtime._participant import HandlerKind, Subscription
from sagakit.runtime._redelivery import Redelivery, attempt_of
from sagakit.runtime._relay import OutboxRelay
from sagakit.runtime._settings import ParticipantSettings
from sagakit.spec._spec import SagaSpec
from sagakit.store._store import Store, body_digest

logger = logging.getLogger("sagakit.runtime")


class RetryableError(Exception):
    """A handler failed in a way that may pass: retry through the delay queue."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class Dispatcher:
    """Handles the deliveries of one participant's subscriptions."""

    def __init__(
        self,
        name: str,
        *,
        spec: SagaSpec,
        store: Store,
        settings: ParticipantSettings,
        breaker: CircuitBreaker,
        relay: OutboxRelay,
        redelivery: Redelivery,
        forward: ForwardStep,
        compensation: Compensation,
    ) -> None:
        self.name = name
        self.spec = spec
        self.store = store
        self.settings = settings
        self.breaker = breaker
        self.relay = relay
        self.redelivery = redelivery
        self.forward = forward
        self.compensation = compensation
        # A start event must leave room for the saga's history and the fields each step
        # adds: every later event carries it, and must stay within the limit too.
        self.start_event_limit = settings.max_message_bytes - min(
            16 * 1024, settings.max_message_bytes // 4
        )

    async def handle(
        self, sub: Subscription, envelope: Envelope[Any], scope: DeliveryScope
    ) -> None:
        """Handle one delivery of ``sub``, whose body FastStream validated as ``envelope``."""
        message = scope.message
        scope.began = True
        self.check(sub, envelope, message.body)
        scope.saga, scope.event_type, scope.step = envelope.context, sub.event_type, sub.name
        EVENTS_CONSUMED.labels(self.name, sub.event_type).inc()
        attempt = attempt_of(message.headers)
        digest = body_digest(message.body)
        began = time.perf_counter()
        try:
            with step_span(
                f"{sub.kind.value} {sub.name}",
                saga=envelope.context,
                step=sub.name,
                participant=self.name,
                parent=scope.headers,
            ) as span:
                span.set_attribute("saga.handler", sub.kind.value)
                span.set_attribute("messaging.message.id", str(envelope.event_id))
                handled = await self._handle_held(sub, envelope, message, attempt, digest, span)
                if handled is None:
                    return  # handed back to its queue, or taken back by the broker
                record_outcome(span, handled.outcome.value)
                STEP_OUTCOMES.labels(
                    self.name, sub.name, sub.kind.value, handled.outcome.value
                ).inc()
                crash_point(CrashPoint.BEFORE_PUBLISH, sub.event_type)
                if not await self._publish(sub, message, handled):
                    return  # committed: the relay loop publishes the events
                crash_point(CrashPoint.BEFORE_ACK, sub.event_type)
                if handled.outcome.acks:
                    await message.ack()
        finally:
            self.relay.release(scope.held)
            STEP_DURATION.labels(self.name, sub.name, sub.kind.value).observe(
                time.perf_counter() - began
            )

    def check(self, sub: Subscription, envelope: Envelope[Any], body: bytes) -> None:
        """What a valid body may still get wrong: refuse it as an InvalidMessage."""
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
            if len(body) > self.start_event_limit:
                raise InvalidMessage(
                    f"too_large: a start event may take {self.start_event_limit} bytes, to"
                    f" leave room for the saga's history; this one has {len(body)}"
                )

    # -- outages -----------------------------------------------------------------------

    async def _handle_held(
        self,
        sub: Subscription,
        envelope: Envelope[Any],
        message: Any,
        attempt: int,
        digest: str,
        span: Span,
    ) -> Handled | None:
        """Handle the delivery; while the store or the broker is away, hold it and run it
        again once the dependency answers. None: the delivery is no longer ours."""
        while True:
            if not await self._admit(sub, message):
                return None
            try:
                try:
                    return await self._dispatch(sub, envelope, attempt, digest)
                except RetryableError as retry:
                    span.record_exception(retry.cause)
                    return await self._after_transient(
                        sub, envelope, message, attempt, retry, digest
                    )
            except Outage as outage:
                # Nothing was committed: the delivery runs again, as if it had just arrived,
                # and no attempt is counted.
                self.breaker.trip(outage.dependency, outage.cause)
                if self.breaker.stopping:
                    await self.redelivery.hand_back(sub, message)
                    return None
                if delivery_lost(message):
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
                if await self.redelivery.hand_back(sub, message):
                    return False
                if self.breaker.stopping:
                    return False
        finally:
            HELD_DELIVERIES.labels(self.name).dec()
        return not delivery_lost(message)

    async def _publish(self, sub: Subscription, message: Any, handled: Handled) -> bool:
        """Publish the committed rows; while the broker refuses them, hold the delivery
        unacknowledged. False if the delivery is no longer ours (the events stay in the
        outbox, where the relay loop finds them)."""
        pending = handled.rows
        while pending:
            published = await self.relay.publish(pending)
            if not published.unpublished or published.refusal is None:
                return True  # confirmed, or unroutable: the relay loop tries those again
            pending = published.unpublished
            if self.breaker.stopping:
                await self.redelivery.hand_back(sub, message)
                return False
            if not await self._admit(sub, message):
                return False
        return True

    async def _store_outage(self, error: Exception) -> Outage | None:
        if await self.breaker.store_away(error):
            return Outage(Dependency.STORE, error)
        return None

    # -- handlers, and what follows their failure --------------------------------------

    async def _dispatch(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        try:
            if sub.kind is HandlerKind.STEP:
                return await self.forward.run(sub, envelope, attempt, digest)
            if sub.kind is HandlerKind.COMPENSATION:
                return await self.compensation.run(sub, envelope, attempt, digest)
            return await self._react(sub, envelope, attempt, digest)
        except (RetryableError, InvalidMessage, Outage):
            raise
        except Exception as exc:
            # The store the runtime needs is not the step's to fail on: whether the error
            # came from sagakit's statements or the handler's own, on the store.
            outage = await self._store_outage(exc)
            if outage is not None:
                raise outage from exc
            raise RetryableError(exc) from exc

    async def _react(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        async with self.store.write() as transaction:
            if not (await first_delivery(self.store, transaction, sub, envelope, digest)).first:
                return Handled(Outcome.DUPLICATE)
            await call_handler(
                sub,
                envelope,
                transaction,
                attempt=attempt,
                step_timeout=self.settings.step_timeout_seconds,
            )
        return Handled(Outcome.HANDLED)

    async def _after_transient(
        self,
        sub: Subscription,
        envelope: Envelope[Any],
        message: Any,
        attempt: int,
        retry: RetryableError,
        digest: str,
    ) -> Handled:
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
                await self.redelivery.retry(sub, message, attempt + 1, str(retry))
            except Exception as exc:
                if broker_refused(exc):
                    raise Outage(Dependency.BROKER, exc) from exc
                raise
            return Handled(Outcome.RETRY)
        if sub.kind is HandlerKind.STEP:
            assert sub.step is not None
            logger.warning("retries exhausted, failing the step: %s", retry)
            failure = BusinessFailure("retries_exhausted", detail=type(retry.cause).__name__)
            try:
                return await self.forward.record_failure(sub, sub.step, envelope, failure, digest)
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
            await self.redelivery.park(
                message,
                queue=sub.queue,
                reason=f"{sub.kind.value}_failed: {retry}",
                kind=sub.kind.value,
            )
        except Exception as exc:
            if broker_refused(exc):
                raise Outage(Dependency.BROKER, exc) from exc
            raise
        return Handled(Outcome.PARKED)


def delivery_lost(message: Any) -> bool:
    """True when the channel the delivery came on has closed: the broker took the message
    back (it comes again), and acking it is no longer possible."""
    channel = getattr(message.raw_message, "_IncomingMessage__channel", None)
    return getattr(channel, "is_closed", False) is True
