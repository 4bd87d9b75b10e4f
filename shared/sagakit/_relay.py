"""The outbox relay: publishes committed events with publisher confirms, then marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from faststream.rabbit import RabbitBroker, RabbitExchange

from ._metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from ._store import OutboxRow, Store
from ._tracing import continued_trace

logger = logging.getLogger("sagakit.relay")

# The relay loop leaves young rows to the inline publish that follows each commit.
_STALE_AFTER = timedelta(seconds=2)


class OutboxRelay:
    """Publishes a participant's outbox.

    Rows are published right after the transaction that wrote them commits; a background
    loop publishes whatever that missed (a crash, a broker outage, an unroutable event) and,
    on start, everything a previous run left pending.
    """

    def __init__(
        self,
        store: Store,
        broker: RabbitBroker,
        exchange: RabbitExchange,
        *,
        participant: str,
        interval: float,
    ) -> None:
        self._store = store
        self._broker = broker
        self._exchange = exchange
        self._participant = participant
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def publish(self, event_ids: Sequence[str]) -> None:
        """Publish these just-committed events now."""
        if not event_ids:
            return
        async with self._store.read() as session:
            rows = await self._store.outbox_rows(session, event_ids)
        await self._send(rows)

    async def flush(self, *, older_than: timedelta | None = None) -> int:
        """Publish every pending row (older than ``older_than``); returns how many went out."""
        async with self._store.read() as session:
            rows = await self._store.pending_outbox(session, older_than=older_than)
        return await self._send(rows) if rows else 0

    async def _send(self, rows: Sequence[OutboxRow]) -> int:
        # One saga's events go out in the order they were written (a compensated event
        # before the cancellation it leads to); different sagas' events go out concurrently.
        by_saga: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_saga.setdefault(row.saga_id, []).append(row)
        batches = await asyncio.gather(*(self._publish_in_order(b) for b in by_saga.values()))
        sent = [event_id for batch in batches for event_id in batch]
        if sent:
            async with self._store.transaction() as session:
                await self._store.mark_sent(session, sent)
        return len(sent)

    async def _publish_in_order(self, rows: Sequence[OutboxRow]) -> list[str]:
        sent: list[str] = []
        for row in rows:
            if not await self._publish_one(row):
                break  # a later event of the saga must not overtake this one
            sent.append(row.event_id)
        return sent

    async def _publish_one(self, row: OutboxRow) -> bool:
        try:
            with continued_trace(row.headers):
                await self._broker.publish(
                    row.body.encode(),
                    exchange=self._exchange,
                    routing_key=row.routing_key,
                    headers=dict(row.headers),
                    persist=True,
                    mandatory=True,
                    **row.properties,
                )
        except Exception as exc:
            # Unroutable (no queue bound yet) or the broker is away: the row stays pending.
            logger.error(
                "could not publish %s %s, will retry: %s", row.routing_key, row.event_id, exc
            )
            return False
        EVENTS_PUBLISHED.labels(self._participant, row.routing_key).inc()
        return True

    def start(self) -> None:
        """Publish what a previous run left pending, then keep watching the outbox."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._participant}-relay")

    async def stop(self) -> None:
        """Stop the background loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                # Even on the first pass: a row younger than this may belong to a message
                # being handled right now, whose inline publish would race this one.
                await self.flush(older_than=_STALE_AFTER)
                async with self._store.read() as session:
                    backlog = await self._store.count_pending_outbox(session)
                OUTBOX_BACKLOG.labels(self._participant).set(backlog)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("outbox relay pass failed")
            await asyncio.sleep(self._interval)
