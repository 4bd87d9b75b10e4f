"""Waiting for a run to end: every saga ended or parked, then the whole system at rest.

Shared by the chaos run and the fault matrix (tests/faults): both start sagas, do harm,
and must know when there is nothing left to happen before the audit reads the stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence

import aio_pika
from sagakit import SagaSpec
from sagakit.broker import retry_queue_name
from sagakit.client import DeadLetters
from sagakit.testing import QueueProbe, consumed_queues

from ._ledger import Ledger
from ._stores import read_stores

logger = logging.getLogger("chaos.settle")


def work_queues(spec: SagaSpec, participants: Sequence[str]) -> tuple[str, ...]:
    """Every queue the participants consume from."""
    return tuple(q for p in participants for q in consumed_queues(spec, p))


def work_and_retry_queues(spec: SagaSpec, participants: Sequence[str]) -> list[str]:
    """The work queues and the delay queue beside each."""
    queues = []
    for queue in work_queues(spec, participants):
        queues += [queue, retry_queue_name(queue)]
    return queues


async def queued_messages(url: str, queues: Sequence[str]) -> int:
    """How many messages wait in ``queues`` (ready ones; unacked ones do not count)."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        total = 0
        channel = await connection.channel()
        for queue in queues:
            declared = await channel.declare_queue(queue, passive=True)
            total += declared.declaration_result.message_count or 0
        return total
    finally:
        await connection.close()


async def consumers(url: str, spec: SagaSpec, participants: Sequence[str]) -> dict[str, int]:
    """Consumers per work queue: one each, or a service is missing or a zombie holds one."""
    probe = QueueProbe(url)
    try:
        return await probe.counts(work_queues(spec, participants))
    finally:
        await probe.close()


async def parked_saga_ids(url: str, participants: Sequence[str]) -> set[str]:
    """The saga ids of every message parked in the participants' dead-letter queues."""
    async with DeadLetters(url, services=participants) as dead_letters:
        return {entry.saga_id for entry in await dead_letters.parked() if entry.saga_id}


async def wait_for_end(
    ledger: Ledger,
    planned: Collection[str],
    url: str,
    *,
    participants: Sequence[str],
    within: float,
) -> set[str]:
    """Until every saga of ``planned`` has ended or is parked, or ``within`` seconds have
    passed (the audit names the rest); the sagas still open."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + within
    parked: set[str] = set()
    while True:
        pending = set(planned) - ledger.ended - parked
        remaining = give_up_at - loop.time()
        logger.info("%d of %d sagas ended, %d parked", len(ledger.ended), len(planned), len(parked))
        if not pending or remaining <= 0:
            return pending
        if not await ledger.wait_progress(min(5.0, remaining)):
            # Nothing ended for a while: are the rest parked?
            parked = await parked_saga_ids(url, participants) & set(planned)


async def quiesce(
    url: str,
    databases: Mapping[str, str],
    *,
    spec: SagaSpec,
    participants: Sequence[str],
    within: float,
) -> bool:
    """Until no message waits in any queue, every outbox is sent and nothing changes;
    False if that did not happen within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + within
    queues = work_and_retry_queues(spec, participants)
    previous: tuple[int, int] | None = None
    while loop.time() < give_up_at:
        queued = await queued_messages(url, queues)
        state = await read_stores(databases)
        current = (queued + sum(state.pending_outbox.values()), state.inbox_rows)
        if current[0] == 0 and current == previous:
            return True
        previous = current
        await asyncio.sleep(1.5)
    logger.warning("the system did not come to rest within %gs", within)
    return False
