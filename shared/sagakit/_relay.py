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
# Rows published inline within this long are marked sent in one transaction.
_MARK_WINDOW_SECONDS = 0.01


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
        self._marks = _SentMarks(store)

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Publish these just-committed outbox rows now; they are marked sent soon after.

        Returns once the broker has confirmed them. The rows are those the transaction
        wrote (``Store.add_to_outbox`` returns them), so they go out without being read
        back; they are marked sent in the background, with other handlers' rows.
        """
        if rows:
            await self._send(rows, inline=True)

    async def flush(self, *, older_than: timedelta | None = None) -> int:
        """Publish every pending row (older than ``older_than``); returns how many went out."""
        async with self._store.read() as session:
            rows = await self._store.pending_outbox(session, older_than=older_than)
        return await self._send(rows) if rows else 0

    async def _send(self, rows: Sequence[OutboxRow], *, inline: bool = False) -> int:
        # One saga's events go out in the order they were written (a compensated event
        # before the cancellation it leads to); different sagas' events go out concurrently.
        by_saga: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_saga.setdefault(row.saga_id, []).append(row)
        if len(by_saga) == 1:
            [only] = by_saga.values()
            sent = await self._publish_in_order(only, inline=inline)
        else:
            batches = await asyncio.gather(
                *(self._publish_in_order(b, inline=inline) for b in by_saga.values())
            )
            sent = [event_id for batch in batches for event_id in batch]
        if sent and inline:
            self._marks.add(sent)
        elif sent:
            async with self._store.transaction() as session:
                await self._store.mark_sent(session, sent)
        return len(sent)

    async def _publish_in_order(self, rows: Sequence[OutboxRow], *, inline: bool) -> list[str]:
        sent: list[str] = []
        for row in rows:
            if not await self._publish_one(row, inline=inline):
                break  # a later event of the saga must not overtake this one
            sent.append(row.event_id)
        return sent

    async def _publish_one(self, row: OutboxRow, *, inline: bool) -> bool:
        try:
            # Inline, the handler's span is current and the row's trace headers name it: only
            # a late publish needs the trace put back.
            with contextlib.nullcontext() if inline else continued_trace(row.headers):
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

    async def settle(self) -> None:
        """Wait until the rows published so far are marked sent."""
        await self._marks.settle()

    async def stop(self) -> None:
        """Mark what was published, then stop the background loop."""
        await self._marks.settle()
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


class _SentMarks:
    """Marks published rows as sent, in the background, many handlers' rows per transaction.

    Marking is bookkeeping: a row left unmarked (a crash, a failed write) is published
    again by the relay loop, and consumers drop the copy by its event id. So no handler
    waits for it: a delivery is acked as soon as its events are confirmed, and the rows
    published within one short window share a transaction.
    """

    def __init__(self, store: Store, *, window: float = _MARK_WINDOW_SECONDS) -> None:
        self._store = store
        self._window = window
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, event_ids: Sequence[str]) -> None:
        self._pending.extend(event_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="sagakit-sent-marks")

    async def settle(self) -> None:
        """Wait until every row added so far has been written (or its write has failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self._window)
            batch, self._pending = self._pending, []
            try:
                async with self._store.write() as transaction:
                    await self._store.mark_sent(transaction, batch)
            except Exception as exc:
                logger.warning(
                    "could not mark %d published events as sent (the relay publishes them"
                    " again, and consumers drop the copies): %s",
                    len(batch),
                    exc,
                )
