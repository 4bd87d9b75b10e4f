"""Dead letters on the real broker: parked with a reason, listed, replayed once fixed, purged."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from sagakit._dlq import DeadLetters

from .probe_flow import Behaviour, Watch, probe_services, running

pytestmark = pytest.mark.integration


async def _wait_parked(dead_letters: DeadLetters, count: int) -> list[object]:
    async with asyncio.timeout(15):
        while len(entries := await dead_letters.parked()) < count:
            await asyncio.sleep(0.1)
    return entries  # type: ignore[return-value]


async def test_parked_messages_are_listed_replayed_and_purged(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour(second_fails=True, undo_transient=3)  # more than the budget of 2
    services = probe_services(rabbitmq_url, str(tmp_path), behaviour)
    async with (
        running(services),
        Watch(rabbitmq_url) as watch,
        DeadLetters(rabbitmq_url, services=["alpha", "beta"]) as dead_letters,
    ):
        await dead_letters.purge()
        started = await watch.start()
        await watch.exchange.publish(
            aio_pika.Message(b"\x00 not json"), routing_key="probe.started"
        )
        entries = await _wait_parked(dead_letters, 2)
        by_reason = {e.reason.split(":")[0]: e for e in entries}  # type: ignore[attr-defined]
        assert set(by_reason) == {"undecodable", "compensation_failed"}
        compensation = by_reason["compensation_failed"]
        assert compensation.saga_id == str(started.context.saga_id)
        assert compensation.event_type == "beta.failed"
        assert compensation.origin_queue == "alpha.beta.failed"
        assert compensation.first_failure_at
        # listing took nothing away
        assert len(await dead_letters.parked()) == 2

        # the dependency is back: replaying the compensation finishes the saga
        replayed = await dead_letters.replay([compensation.id])
        assert [r.id for r in replayed] == [compensation.id]
        assert await watch.until("probe.cancelled") == [
            "probe.started",
            "alpha.done",
            "beta.failed",
            "alpha.undone",
            "probe.cancelled",
        ]
        remaining = await dead_letters.parked()
        assert [e.reason.split(":")[0] for e in remaining] == ["undecodable"]

        assert await dead_letters.purge() == 1
        assert await dead_letters.parked() == []
