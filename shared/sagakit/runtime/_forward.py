"""The forward path: a step runs once, before the saga's deadline, and a step that fails is
recorded as failed and announced (the decisions are in ``_rules.py``)."""

from __future__ import annotations

import logging
from typing import Any

from sagakit._context import DETAIL_MAX_LENGTH, REASON_MAX_LENGTH, StepOutcome, current_scope
from sagakit._envelope import Envelope
from sagakit._exceptions import InvalidMessage, StepFailed
from sagakit.broker._topology import CANCELLED_BY_OPERATOR, OPERATOR_CANCEL_HEADER
from sagakit.observability._tracing import record_step_failure
from sagakit.runtime import _rules as rules
from sagakit.runtime._events import Events, EventTooLarge
from sagakit.runtime._handlers import call_handler, first_delivery
from sagakit.runtime._outcome import Handled, Outcome
from sagakit.runtime._participant import Subscription
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._store import StepStatus, Store

logger = logging.getLogger("sagakit.runtime")


def _cancelled_by_operator() -> bool:
    scope = current_scope()
    return scope is not None and bool(scope.headers.get(OPERATOR_CANCEL_HEADER))


class ForwardStep:
    """Runs a participant's steps, and records the failures of its steps."""

    def __init__(
        self, *, spec: SagaSpec, store: Store, events: Events, step_timeout: float
    ) -> None:
        self.spec = spec
        self.store = store
        self.events = events
        self.step_timeout = step_timeout

    async def run(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        """Run the step ``envelope`` triggers, unless its record says it ran already."""
        step = sub.step
        assert step is not None
        saga_id = envelope.context.saga_id
        try:
            async with self.store.write() as transaction:
                if not await first_delivery(self.store, transaction, sub, envelope, digest):
                    return await self.events.duplicate(transaction, envelope)
                status = await self.store.claim_step(transaction, step=step.name, saga_id=saga_id)
                decision = rules.on_forward(
                    status, past_deadline=envelope.context.is_past_deadline()
                )
                if decision is rules.ForwardDecision.IGNORE:
                    logger.info("step already %s: forward event ignored", status)
                    return Handled(Outcome.IGNORED)
                if decision is rules.ForwardDecision.FAIL_DEADLINE:
                    raise StepFailed("deadline_exceeded", detail="the saga's deadline has passed")
                if _cancelled_by_operator():
                    # An operator's copy of the trigger (client/_steering.py): the step fails
                    # here, by this participant, so every rule holds as for any failure; the
                    # original, if it comes later, is a duplicate.
                    raise StepFailed(CANCELLED_BY_OPERATOR, detail="cancelled by an operator")
                result = await call_handler(
                    sub, envelope, transaction, attempt=attempt, step_timeout=self.step_timeout
                )
                self.events.expect(result, step.success)
                record = self.events.record(step, StepOutcome.COMPLETED)
                success = self.events.envelope(result, cause=envelope, record=record)
                await self.store.set_step_status(
                    transaction, step=step.name, saga_id=saga_id, status=StepStatus.COMPLETED
                )
                return Handled(Outcome.COMPLETED, await self.events.emit(transaction, [success]))
        except StepFailed as failure:
            return await self.record_failure(sub, step, envelope, failure, digest)
        except EventTooLarge as too_large:
            # Nobody could take the event: the step's effects are rolled back with it, and
            # the step fails so that the saga is undone instead of stranded.
            logger.warning("the step's event is too large, failing the step: %s", too_large)
            oversized = StepFailed("event_too_large", detail=str(too_large))
            return await self.record_failure(sub, step, envelope, oversized, digest)

    async def record_failure(
        self,
        sub: Subscription,
        step: StepSpec,
        envelope: Envelope[Any],
        failure: StepFailed,
        digest: str,
    ) -> Handled:
        """In a fresh transaction (the step's own writes are gone): mark failed, emit failure."""
        reason = failure.reason[:REASON_MAX_LENGTH]
        try:
            return await self._write_failure(sub, step, envelope, reason, failure.detail, digest)
        except EventTooLarge:
            pass
        try:
            # The failure event carries what the incoming event carried, plus a reason and
            # a detail: without the detail, it is at most a record larger than that event.
            return await self._write_failure(sub, step, envelope, reason, "", digest)
        except EventTooLarge as too_large:
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
    ) -> Handled:
        saga_id = envelope.context.saga_id
        async with self.store.write() as transaction:
            if not await first_delivery(self.store, transaction, sub, envelope, digest):
                return await self.events.duplicate(transaction, envelope)
            claimed = await self.store.claim_step(transaction, step=step.name, saga_id=saga_id)
            if claimed is not None:
                return Handled(Outcome.IGNORED)
            record = self.events.record(step, StepOutcome.FAILED, reason=reason)
            payload = self.events.system_payload(
                step.failure, envelope, reason=reason, detail=detail[:DETAIL_MAX_LENGTH]
            )
            failed = self.events.envelope(payload, cause=envelope, record=record)
            events = [failed]
            if self.spec.is_first(step):
                events.append(self.events.cancellation(failed, step.name, reason))
            await self.store.set_step_status(
                transaction,
                step=step.name,
                saga_id=saga_id,
                status=StepStatus.FAILED,
                reason=reason,
            )
            rows = await self.events.emit(transaction, events)
            logger.info("step failed: %s", reason)
            record_step_failure(reason)
            return Handled(Outcome.FAILED, rows)
