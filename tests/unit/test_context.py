"""SagaContext: identity, history, deadline, and the ContextVar that carries it in-process."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sagakit import SagaContext, StepOutcome, StepRecord, current_saga, utc_now
from sagakit._context import DeliveryScope, current_scope, saga_scope


def _record(step: str, outcome: StepOutcome, reason: str | None = None) -> StepRecord:
    return StepRecord(step=step, participant="p", outcome=outcome, at=utc_now(), reason=reason)


def test_a_new_saga_has_an_id_no_cause_and_no_steps() -> None:
    context = SagaContext.start("order_fulfilment")
    assert isinstance(context.saga_id, uuid.UUID)
    assert context.causation_id is None
    assert context.steps == ()


def test_followed_by_appends_the_record_and_sets_the_cause() -> None:
    context = SagaContext.start("order_fulfilment")
    cause = uuid.uuid4()
    after = context.followed_by(cause, _record("a", StepOutcome.COMPLETED))
    assert after.causation_id == cause
    assert after.saga_id == context.saga_id
    assert [r.step for r in after.steps] == ["a"]
    assert context.steps == ()  # the original is untouched


def test_last_failure_is_the_most_recent_failed_step() -> None:
    context = SagaContext.start("t")
    context = context.followed_by(uuid.uuid4(), _record("a", StepOutcome.COMPLETED))
    assert context.last_failure() is None
    context = context.followed_by(uuid.uuid4(), _record("b", StepOutcome.FAILED, "declined"))
    context = context.followed_by(uuid.uuid4(), _record("a", StepOutcome.COMPENSATED))
    failure = context.last_failure()
    assert failure is not None
    assert (failure.step, failure.reason) == ("b", "declined")
    assert context.completed_steps() == ("a",)


def test_deadline() -> None:
    now = utc_now()
    assert not SagaContext.start("t").is_past_deadline()
    assert SagaContext.start("t", deadline=now - timedelta(seconds=1)).is_past_deadline()
    assert not SagaContext.start("t", deadline=now + timedelta(minutes=1)).is_past_deadline(now)


def test_naive_deadlines_are_refused() -> None:
    with pytest.raises(ValidationError):
        SagaContext(saga_id=uuid.uuid4(), saga_type="t", deadline="2026-01-01T00:00:00")  # type: ignore[arg-type]


def test_saga_scope_sets_and_restores_the_current_saga() -> None:
    outer, inner = SagaContext.start("t"), SagaContext.start("t")
    assert current_saga() is None
    with saga_scope(outer):
        assert current_saga() == outer
        with saga_scope(inner):
            assert current_saga() == inner
        assert current_saga() == outer
    assert current_saga() is None


async def test_concurrent_tasks_each_see_their_own_saga() -> None:
    seen: dict[str, uuid.UUID | None] = {}

    async def handle(name: str) -> None:
        context = SagaContext.start("t")
        with saga_scope(context):
            await asyncio.sleep(0.01)
            current = current_saga()
            seen[name] = current.saga_id if current else None
            assert current == context

    await asyncio.gather(*(handle(f"task{i}") for i in range(10)))
    assert len(set(seen.values())) == 10


def test_a_delivery_scope_is_current_inside_its_block_only() -> None:
    saga = SagaContext.start("order_fulfilment")
    assert current_scope() is None
    with DeliveryScope(saga=saga, event_type="order.created", step="reserve_stock") as scope:
        assert current_scope() is scope
        assert current_saga() == saga
        assert scope.headers == {}  # no delivery: no trace to continue
    assert current_scope() is None
    assert current_saga() is None


def test_saga_scope_inside_a_delivery_keeps_the_rest_of_its_scope() -> None:
    outer, inner = SagaContext.start("a"), SagaContext.start("b")
    with DeliveryScope(saga=outer, event_type="order.created", step="reserve_stock") as scope:
        scope.held.append("event-1")
        with saga_scope(inner):
            nested = current_scope()
            assert nested is not None
            assert nested is not scope
            assert (nested.saga, nested.event_type, nested.step) == (
                inner,
                "order.created",
                "reserve_stock",
            )
            # The same held rows: what a nested scope writes, the delivery releases.
            assert nested.held is scope.held
        assert current_scope() is scope
        assert current_saga() == outer
