"""What the runtime refuses to do, on SQLite and PostgreSQL: emit an event nobody can take,
start a saga from invented history, apply another body under a known event id.

A participant ``solo`` of a two-step flow runs alone on the in-memory broker; its handlers
write an effect row and can make their events as large as a test asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from sagakit import (
    BusinessFailure,
    Envelope,
    EventPayload,
    Participant,
    ParticipantSettings,
    SagaContext,
    SagaSpec,
    StepContext,
    StepOutcome,
    StepRecord,
    StepSpec,
    build_service,
    utc_now,
)
from sagakit.runtime._relay import Published
from sagakit.testing import ParticipantHarness
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

pytestmark = pytest.mark.integration

LIMIT = 8192  # the smallest limits make the sizes easy to reach


class Started(EventPayload):
    event_type: ClassVar[str] = "guard.started"
    blob: str = ""


class SoloDone(EventPayload):
    event_type: ClassVar[str] = "solo.done"
    blob: str = ""


class SoloFailed(EventPayload):
    event_type: ClassVar[str] = "solo.failed"
    reason: str
    detail: str = ""


class SoloUndone(EventPayload):
    event_type: ClassVar[str] = "solo.undone"
    blob: str = ""


class OtherFailed(EventPayload):
    event_type: ClassVar[str] = "other.failed"
    reason: str
    detail: str = ""


class Finished(EventPayload):
    event_type: ClassVar[str] = "guard.finished"


class Cancelled(EventPayload):
    event_type: ClassVar[str] = "guard.cancelled"
    failed_step: str
    reason: str


GUARD = SagaSpec(
    saga_type="guard",
    exchange="guard",
    start_event="guard.started",
    completed_event="guard.finished",
    cancelled_event="guard.cancelled",
    steps=(
        StepSpec(
            name="first",
            participant="solo",
            trigger="guard.started",
            success="solo.done",
            failure="solo.failed",
            compensate_on=("other.failed",),
            compensated="solo.undone",
        ),
        StepSpec(
            name="second",
            participant="other",
            trigger="solo.done",
            success="guard.finished",
            failure="other.failed",
        ),
    ),
    events={
        m.event_type: m
        for m in (Started, SoloDone, SoloFailed, SoloUndone, OtherFailed, Finished, Cancelled)
    },
)

tables = MetaData()
effects = Table(
    "effects",
    tables,
    Column("id", Integer, primary_key=True),
    Column("saga_id", String(36)),
    Column("kind", String(20)),
)
_EFFECT = insert(effects)


@dataclass
class Behaviour:
    done_blob: int = 0  # characters in solo.done's blob
    undo_blob: int = 0  # characters in solo.undone's blob
    refusal: BusinessFailure | None = None


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
async def harness(store_url: str, behaviour: Behaviour) -> AsyncIterator[ParticipantHarness]:
    solo = Participant("solo", spec=GUARD, tables=tables)

    @solo.on_step("first")
    async def first(event: Started, step: StepContext) -> SoloDone:
        await step.execute(_EFFECT, {"saga_id": str(step.saga_id), "kind": "done"})
        if behaviour.refusal is not None:
            raise behaviour.refusal
        return SoloDone(blob="x" * behaviour.done_blob)

    @solo.on_compensation("first")
    async def undo(event: EventPayload, step: StepContext) -> SoloUndone:
        await step.execute(_EFFECT, {"saga_id": str(step.saga_id), "kind": "undone"})
        return SoloUndone(blob="x" * behaviour.undo_blob)

    settings = ParticipantSettings(database_url=store_url, max_message_bytes=LIMIT)
    async with ParticipantHarness(build_service(solo, settings, configure_logs=False)) as running:
        yield running


async def effect_kinds(harness: ParticipantHarness) -> list[str]:
    async with harness.service.store.read() as session:
        rows = await session.execute(select(effects.c.kind).order_by(effects.c.id))
        return [str(kind) for kind in rows.scalars()]


def reasons(harness: ParticipantHarness) -> list[str]:
    return [parked.reason for parked in harness.parked]


async def test_a_success_event_too_large_for_any_consumer_fails_the_step(
    harness: ParticipantHarness, behaviour: Behaviour
) -> None:
    behaviour.done_blob = LIMIT  # solo.done alone would be over the limit
    started = harness.start_saga(Started())

    await harness.publish(started)

    assert harness.emitted_types == ["solo.failed", "guard.cancelled"]
    failed, cancelled = harness.emitted
    assert failed.payload.reason == "event_too_large"
    assert failed.payload.detail.startswith("solo.done would be ")
    assert (cancelled.payload.failed_step, cancelled.payload.reason) == ("first", "event_too_large")
    assert await effect_kinds(harness) == []  # the step's effect rolled back with it
    assert harness.parked == []


async def test_headers_count_toward_the_limit(
    harness: ParticipantHarness, behaviour: Behaviour
) -> None:
    await harness.publish(harness.start_saga(Started()))
    [plain] = harness.emitted
    # A body just under the limit, over it with the event's headers (the saga id, the
    # trace context): the consumer would refuse it just the same.
    behaviour.done_blob = LIMIT - len(plain.encode()) - 10

    await harness.publish(harness.start_saga(Started()))

    assert harness.emitted_types == ["solo.done", "solo.failed", "guard.cancelled"]
    assert harness.emitted[1].payload.reason == "event_too_large"
    assert "of headers" in harness.emitted[1].payload.detail


async def test_a_compensation_whose_event_is_too_large_is_parked_and_undoes_nothing(
    harness: ParticipantHarness, behaviour: Behaviour
) -> None:
    started = harness.start_saga(Started())
    await harness.publish(started)
    [done] = harness.emitted
    behaviour.undo_blob = LIMIT
    failed = harness.event_after(
        done,
        OtherFailed(reason="rejected"),
        producer="other",
        step="second",
        outcome=StepOutcome.FAILED,
        reason="rejected",
    )

    await harness.publish(failed)

    # Undoing without announcing would leave every earlier step done: nothing is undone,
    # and the request waits in the dead-letter queue with its reason.
    assert harness.emitted_types == ["solo.done"]
    [reason] = reasons(harness)
    assert reason.startswith("event_too_large: solo.undone would be ")
    assert await effect_kinds(harness) == ["done"]


async def test_a_start_event_with_history_is_parked_and_does_nothing(
    harness: ParticipantHarness,
) -> None:
    record = StepRecord(
        step="first", participant="solo", outcome=StepOutcome.COMPLETED, at=utc_now()
    )
    invented = Envelope.new(
        Started(),
        context=SagaContext.start("guard").model_copy(update={"steps": (record,)}),
        producer="test",
    )

    await harness.publish(invented)

    assert harness.emitted_types == []
    assert reasons(harness) == [
        "start_event_with_steps: guard.started must arrive with empty context.steps (it has 1)"
    ]
    assert await effect_kinds(harness) == []


async def test_a_start_event_that_leaves_no_room_for_the_sagas_history_is_parked(
    harness: ParticipantHarness,
) -> None:
    # Within the limit, but every later event carries what it carries, and more.
    started = harness.start_saga(Started(blob="x" * (LIMIT - 1500)))
    assert len(started.encode()) < LIMIT

    await harness.publish(started)

    assert harness.emitted_types == []
    [reason] = reasons(harness)
    assert reason.startswith(f"too_large: a start event may take {LIMIT - LIMIT // 4} bytes")
    assert await effect_kinds(harness) == []


async def test_a_padded_reason_in_the_context_is_refused_at_the_door(
    harness: ParticipantHarness,
) -> None:
    started = harness.start_saga(Started())
    await harness.publish(started)
    [done] = harness.emitted
    padded = harness.event_after(
        done,
        OtherFailed(reason="rejected"),
        producer="other",
        step="second",
        outcome=StepOutcome.FAILED,
        reason="r",
    )
    body = padded.encode().replace(b'"reason":"r"', b'"reason":"' + b"r" * 201 + b'"')

    await harness.publish_raw(body, routing_key="other.failed")

    [reason] = reasons(harness)
    assert reason.startswith("schema_invalid: ")
    assert "at most 200 characters" in reason
    assert await effect_kinds(harness) == ["done"]


async def test_a_long_failure_reason_and_detail_are_cut_to_their_bounds(
    harness: ParticipantHarness, behaviour: Behaviour
) -> None:
    behaviour.refusal = BusinessFailure("r" * 500, detail="d" * 5000)
    started = harness.start_saga(Started())

    await harness.publish(started)

    failed, cancelled = harness.emitted
    assert failed.payload.reason == "r" * 200
    assert failed.payload.detail == "d" * 1000
    assert failed.context.steps[-1].reason == "r" * 200
    assert cancelled.payload.reason == "r" * 200


async def test_the_same_event_id_with_another_body_is_parked_not_applied(
    harness: ParticipantHarness,
) -> None:
    started = harness.start_saga(Started(blob="a"))
    await harness.publish(started)
    impostor = started.model_copy(update={"payload": Started(blob="b")})
    assert impostor.event_id == started.event_id

    await harness.publish(started)  # a true duplicate: dropped quietly
    await harness.publish(impostor)

    assert harness.emitted_types == ["solo.done"]
    assert reasons(harness) == [
        f"conflicting_duplicate: event {started.event_id} was handled before with another"
        " body; this one was not applied"
    ]
    assert await effect_kinds(harness) == ["done"]


async def test_an_inbox_record_without_a_digest_is_taken_as_a_plain_duplicate(
    harness: ParticipantHarness,
) -> None:
    # Rows written before digests were kept: nothing to compare, nothing parked.
    started = harness.start_saga(Started(blob="a"))
    await harness.publish(started)
    from sagakit.store._store import inbox

    async with harness.service.store.transaction() as session:
        await session.execute(inbox.update().values(body_digest=None))
    impostor = started.model_copy(update={"payload": Started(blob="b")})

    await harness.publish(impostor)

    assert harness.parked == []
    assert harness.emitted_types == ["solo.done"]
    async with harness.service.store.read() as session:
        count = await session.execute(select(func.count()).select_from(effects))
        assert count.scalar_one() == 1


async def test_a_redelivery_publishes_what_the_first_delivery_committed_but_never_sent(
    harness: ParticipantHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = harness.service.runtime.relay
    publish = relay.publish

    async def died_before_publishing(rows: Any) -> Published:
        return Published()  # committed; then the process died: nothing went out, no ack

    started = harness.start_saga(Started())
    with monkeypatch.context() as patched:
        patched.setattr(relay, "publish", died_before_publishing)
        await harness.publish(started)
    assert harness.emitted_types == []

    monkeypatch.setattr(relay, "publish", publish)
    await harness.publish(started)  # the broker delivers it again

    # A duplicate: the step does not run again, but its event goes out now, not when the
    # relay loop finds the row.
    assert harness.emitted_types == ["solo.done"]
    assert await effect_kinds(harness) == ["done"]
    await relay.settle()
    assert await harness.service.store.count_pending_outbox() == 0
