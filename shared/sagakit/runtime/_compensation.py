"""The backward path: a step is undone at most once, a second request announces again, a
step never finished is announced without undoing, and a saga never seen here is parked
(the decisions are in ``_rules.py``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sagakit._context import StepOutcome
from sagakit._envelope import Envelope
from sagakit._exceptions import InvalidMessage
from sagakit.runtime import _rules as rules
from sagakit.runtime import _step_results as step_results
from sagakit.runtime._events import Events, EventTooLarge
from sagakit.runtime._faults import CrashPoint, crash_point
from sagakit.runtime._handlers import call_handler, first_delivery, run_undos
from sagakit.runtime._outcome import Handled, Outcome
from sagakit.runtime._participant import StepRun, Subscription, UndoFunction
from sagakit.spec._spec import SagaSpec
from sagakit.store._recorder import StepStatus
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.runtime")

_OUTCOMES = {
    rules.CompensationDecision.UNDO: Outcome.COMPENSATED,
    rules.CompensationDecision.ANNOUNCE_AGAIN: Outcome.ANNOUNCED_AGAIN,
    rules.CompensationDecision.NOTHING_TO_UNDO: Outcome.NOTHING_TO_UNDO,
}


class Compensation:
    """Runs a participant's compensations."""

    def __init__(
        self,
        *,
        name: str,
        spec: SagaSpec,
        store: Store,
        events: Events,
        step_timeout: float,
        undo_functions: Mapping[str, UndoFunction] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.store = store
        self.events = events
        self.step_timeout = step_timeout
        self.undo_functions = undo_functions or {}

    async def run(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        """Undo the step ``envelope`` asks to be undone, as its record allows."""
        try:
            return await self._compensate(sub, envelope, attempt, digest)
        except EventTooLarge as too_large:
            # A compensation cannot fail as a business failure (there is no way further
            # back): undoing the step without announcing it would stop the backward path
            # with the earlier steps still done. So nothing is undone, and the request is
            # parked with the reason; with a larger limit it can be replayed.
            raise InvalidMessage(f"event_too_large: {too_large}") from too_large

    async def _compensate(
        self, sub: Subscription, envelope: Envelope[Any], attempt: int, digest: str
    ) -> Handled:
        step = sub.step
        assert step is not None
        assert step.compensated is not None
        saga_id = envelope.context.saga_id
        async with self.store.write() as transaction:
            remembered = await first_delivery(
                self.store, transaction, sub, envelope, digest, step=step.name
            )
            if not remembered.first:
                return await self.events.duplicate(transaction, envelope)
            decision = rules.on_compensation(remembered.status)
            if decision is rules.CompensationDecision.UNKNOWN_SAGA:
                # Rolled back with the claim: the saga stays unknown here (_rules.py says why).
                raise InvalidMessage(
                    f"unknown_saga: {envelope.event_type} asks {self.name} to undo"
                    f" {step.name!r} for saga {saga_id}, of which {self.name} has no record"
                )
            if decision is rules.CompensationDecision.IGNORE:
                logger.warning("compensation requested for a step that failed itself: ignored")
                return Handled(Outcome.IGNORED)
            record = self.events.record(step, StepOutcome.COMPENSATED)
            run = StepRun(undo_functions=self.undo_functions)
            if decision is rules.CompensationDecision.UNDO:
                # The handler undoes what its own step produced, as the step left it.
                kept = await step_results.load(transaction, step=step.name, saga_id=saga_id)
                done = (
                    self.spec.model_for(step.success).model_validate_json(kept.payload)
                    if kept is not None
                    else None
                )
                result = await call_handler(
                    sub,
                    envelope,
                    transaction,
                    attempt=attempt,
                    step_timeout=self.step_timeout,
                    run=run,
                    payload=done,
                )
                if result is None:
                    result = self.events.system_payload(step.compensated, envelope)
                else:
                    self.events.expect(result, step.compensated, sub)
                if kept is not None:
                    # In the compensation's transaction: if an undo fails, nothing is
                    # committed and the compensation is retried, undos and all.
                    await run_undos(kept.undos, self.undo_functions)
                crash_point(CrashPoint.MID_COMPENSATION, sub.event_type)
            else:
                # Nothing to undo, but the backward path must go on: announce the compensated
                # event (an event announced before keeps its id and body, so consumers dedupe).
                result = self.events.system_payload(step.compensated, envelope)
                logger.info("compensation is a no-op (%s)", decision.value)
            compensated = self.events.envelope(result, cause=envelope, record=record, data=run.data)
            events = [compensated]
            if self.spec.ends_backward_path(step):
                failure = envelope.context.last_failure()
                events.append(
                    self.events.cancellation(
                        compensated,
                        failure.step if failure else "unknown",
                        (failure.reason or "unknown") if failure else "unknown",
                    )
                )
            emitted = await self.events.emit(
                transaction, events, step=step.name, status=StepStatus.COMPENSATED
            )
            return Handled(_OUTCOMES[decision], emitted)
