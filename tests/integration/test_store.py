"""The store on SQLite and PostgreSQL: inbox, step claims, outbox, atomicity."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sagakit.store import OutboxRow, StepStatus, Store


def _row(event_id: str, body: str = "{}") -> OutboxRow:
    return OutboxRow(
        event_id=event_id,
        saga_id=str(uuid.uuid4()),
        routing_key="x.happened",
        body=body,
        properties={"message_id": event_id},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.create_schema()
    yield store
    await store.dispose()


async def test_the_inbox_remembers_each_message_once_per_consumer(store: Store) -> None:
    saga = uuid.uuid4()
    async with store.transaction() as session:
        assert await store.remember_message(session, consumer="q1", message_id="m1", saga_id=saga)
        assert not await store.remember_message(
            session, consumer="q1", message_id="m1", saga_id=saga
        )
        assert await store.remember_message(session, consumer="q2", message_id="m1", saga_id=saga)
    async with store.transaction() as session:
        assert not await store.remember_message(
            session, consumer="q1", message_id="m1", saga_id=saga
        )


async def test_a_rolled_back_transaction_leaves_no_trace(store: Store) -> None:
    saga = uuid.uuid4()

    async def crash_mid_transaction() -> None:
        async with store.transaction() as session:
            await store.remember_message(session, consumer="q", message_id="m", saga_id=saga)
            assert await store.claim_step(session, step="s", saga_id=saga) is None
            await store.add_to_outbox(session, [_row("e1")])
            raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await crash_mid_transaction()
    async with store.transaction() as session:
        assert await store.remember_message(session, consumer="q", message_id="m", saga_id=saga)
        assert await store.step_status(session, step="s", saga_id=saga) is None
        assert await store.pending_outbox(session) == []


async def test_a_step_is_claimed_once(store: Store) -> None:
    saga = uuid.uuid4()
    async with store.transaction() as session:
        assert await store.claim_step(session, step="s", saga_id=saga) is None
        await store.set_step_status(session, step="s", saga_id=saga, status=StepStatus.COMPLETED)
    async with store.transaction() as session:
        assert await store.claim_step(session, step="s", saga_id=saga) is StepStatus.COMPLETED


async def test_concurrent_claims_for_one_saga_have_one_winner(store: Store) -> None:
    saga = uuid.uuid4()
    results: list[StepStatus | None] = []

    async def claim_and_complete() -> None:
        async with store.transaction() as session:
            status = await store.claim_step(session, step="s", saga_id=saga)
            results.append(status)
            if status is None:
                await asyncio.sleep(0.05)  # hold the claim while the other one waits
                await store.set_step_status(
                    session, step="s", saga_id=saga, status=StepStatus.COMPLETED
                )

    await asyncio.gather(claim_and_complete(), claim_and_complete())
    assert sorted(results, key=str) == sorted([None, StepStatus.COMPLETED], key=str)


async def test_outbox_rows_wait_until_marked_sent(store: Store) -> None:
    async with store.transaction() as session:
        await store.add_to_outbox(session, [_row("e1", '{"n": 1}'), _row("e2")])
    async with store.read() as session:
        pending = await store.pending_outbox(session)
        assert [r.event_id for r in pending] == ["e1", "e2"]
        assert pending[0].body == '{"n": 1}'
        assert pending[0].headers["traceparent"].startswith("00-")
        assert await store.count_pending_outbox(session) == 2
    async with store.transaction() as session:
        await store.mark_sent(session, ["e1"])
    async with store.read() as session:
        assert [r.event_id for r in await store.pending_outbox(session)] == ["e2"]


async def test_announcing_an_event_again_keeps_its_original_body(store: Store) -> None:
    async with store.transaction() as session:
        await store.add_to_outbox(session, [_row("e1", '{"first": true}')])
    async with store.transaction() as session:
        await store.mark_sent(session, ["e1"])
    async with store.transaction() as session:
        await store.add_to_outbox(session, [_row("e1", '{"second": true}')])
    async with store.read() as session:
        [again] = await store.pending_outbox(session)
        assert again.body == '{"first": true}'


async def test_rows_written_together_are_published_in_the_order_written(store: Store) -> None:
    ids = [f"e{n}" for n in range(20)]
    async with store.transaction() as session:
        await store.add_to_outbox(session, [_row(i) for i in ids])
    async with store.read() as session:
        assert [r.event_id for r in await store.pending_outbox(session)] == ids


async def test_replicas_creating_the_schema_at_once_do_not_collide(store_url: str) -> None:
    stores = [Store(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.create_schema() for s in stores))
        async with stores[0].read() as session:
            assert await stores[0].count_pending_outbox(session) == 0
    finally:
        await asyncio.gather(*(s.dispose() for s in stores))
