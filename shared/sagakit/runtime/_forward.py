"""The forward path: a step runs once, before the saga's deadline, and a step that fails is
recorded as failed and announced (the decisions are in ``_rules.py``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sagakit._context import DETAIL_MAX_LENGTH, REASON_MAX_LENGTH, StepOutcome, current_scope
from sagakit._envelope import Envelope
from sagakit._exceptions import BusinessFailure, InvalidMessage
from sagakit.broker._topology import CANCELLED_BY_OPERATOR, OPERATOR_CANCEL_HEADER
from sagakit.observability._tracing import record_step_failure
from sagakit.runtime import _rules as rules
from sagakit.runtime import _step_results as step_results
from sagakit.runtime._events import Events, EventTooLarge
from sagakit.runtime._handlers import call_handler, first_delivery, run_undos
from sagakit.runtime._outcome import Handled, Outcome
from sagakit.runtime._participant import StepRun, Subscription, UndoFunction
from sagakit.runtime._step_results import StepResult
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.store._recorder import StepStatus
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.runtime")


def _cancelled_by_operator() -> bool:
    scope = current_scope()
    return scope is not None and bool(scope.headers.get(OPERATOR_CANCEL_HEADER))


class ForwardStep:
    """Runs a participant's steps, and records the failures of its steps."""

    def __init__(
        self,
        *,
        spec: SagaSpec,
        store: Store,
        events: Events,
        step_timeout: float,
        undo_functions: Mapping[str, UndoFunction] | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.events = events
        self.step_timeout = step_timeout
        self.undo_functions = undo_functions or {}

    async def run(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        """Run the step ``envelope`` triggers, unless its record says it ran already."""
        step = sub.step
        assert step is not None
        saga_id = envelope.context.saga_id
        run = StepRun(undo_functions=self.undo_functions)
        try:
            async with self.store.write() as transaction:
                remembered = await first_delivery(
                    self.store, transaction, sub, envelope, digest, step=step.name
                )
                if not remembered.first:
                    return await self.events.duplicate(transaction, envelope)
                status = remembered.status
                decision = rules.on_forward(
                    status, past_deadline=envelope.context.is_past_deadline()
                )
                if decision is rules.ForwardDecision.IGNORE:
                    logger.info("step already %s: forward event ignored", status)
                    return Handled(Outcome.IGNORED)
                if decision is rules.ForwardDecision.FAIL_DEADLINE:
                    raise BusinessFailure(
                        "deadline_exceeded", detail="the saga's deadline has passed"
                    )
                if _cancelled_by_operator():
                    # An operator's copy of the trigger (client/_steering.py): the step fails
                    # here, by this participant, so every rule holds as for any failure; the
                    # original, if it comes later, is a duplicate.
                    raise BusinessFailure(CANCELLED_BY_OPERATOR, detail="cancelled by an operator")
                result = await call_handler(
                    sub,
                    envelope,
                    transaction,
                    attempt=attempt,
                    step_timeout=self.step_timeout,
                    run=run,
                )
                self.events.expect(result, step.success, sub)
                record = self.events.record(step, StepOutcome.COMPLETED)
                success = self.events.envelope(result, cause=envelope, record=record, data=run.data)
                # What its compensation receives, and the undos it registered.
                kept = StepResult(payload=result.model_dump_json(), undos=tuple(run.undos))
                await step_results.save(transaction, step=step.name, saga_id=saga_id, result=kept)
                emitted = await self.events.emit(
                    transaction, [success], step=step.name, status=StepStatus.COMPLETED
                )
                return Handled(Outcome.COMPLETED, emitted)
        except BusinessFailure as failure:
            await self._undo_attempt(run)
            return await self.record_failure(sub, step, envelope, failure, digest)
        except EventTooLarge as too_large:
            # Nobody could take the event: the step's effects are rolled back with it, and
            # the step fails so that the saga is undone instead of stranded.
            logger.warning("the step's event is too large, failing the step: %s", too_large)
            await self._undo_attempt(run)
            oversized = BusinessFailure("event_too_large", detail=str(too_large))
            return await self.record_failure(sub, step, envelope, oversized, digest)
        except Exception:
            # Rolled back (a transient error, a bug, an outage): what the step did outside
            # its database is undone too, so that a retry starts clean.
            await self._undo_attempt(run)
            raise

    async def _undo_attempt(self, run: StepRun) -> None:
        """Run the undos this run of the step registered; nothing committed keeps them."""
        undos, run.undos = list(run.undos), []
        if not undos:
            return
        try:
            await run_undos(undos, self.undo_functions)
        except Exception as error:
            # The effect outside may still be there: parked, so that nothing is announced
            # over it; once the cause is fixed, a redrive runs the step (and its undo) again.
            raise InvalidMessage(
                f"undo_failed: {', '.join(u.name for u in undos)} raised "
                f"{type(error).__name__}: {str(error)[:200]}"
            ) from error

    async def record_failure(
        self,
        sub: Subscription,
        step: StepSpec,
        envelope: Envelope[Any],
        failure: BusinessFailure,
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
        async with self.store.write() as transaction:
            remembered = await first_delivery(
                self.store, transaction, sub, envelope, digest, step=step.name
            )
            if not remembered.first:
                return await self.events.duplicate(transaction, envelope)
            if remembered.status is not None:
                return Handled(Outcome.IGNORED)
            record = self.events.record(step, StepOutcome.FAILED, reason=reason)
            payload = self.events.system_payload(
                step.failure, envelope, reason=reason, detail=detail[:DETAIL_MAX_LENGTH]
            )
            failed = self.events.envelope(payload, cause=envelope, record=record)
            events = [failed]
            if self.spec.ends_backward_path(step):
                events.append(self.events.cancellation(failed, step.name, reason))
            rows = await self.events.emit(
                transaction, events, step=step.name, status=StepStatus.FAILED, reason=reason
            )
            logger.info("step failed: %s", reason)
            record_step_failure(reason)
            return Handled(Outcome.FAILED, rows)
