"""The outbox relay: publishes committed events with publisher confirms, then marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from faststream.rabbit import RabbitBroker, RabbitExchange

from sagakit.observability._metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from sagakit.observability._tracing import continued_trace
from sagakit.runtime._breaker import CircuitBreaker, Dependency
from sagakit.runtime._outage import broker_refused
from sagakit.store._recorder import OutboxRow
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.relay")

# The relay loop publishes a row nobody holds once it is this old. A row is held by the
# process that wrote it from its transaction until its sent mark (``hold``), and rows whose
# publish or mark failed here are retried at the next pass whatever their age; so only rows
# of a process that died, or of another replica sharing the store, wait this long. The
# second kind may only be waiting for its mark: short, this would publish it twice.
_STALE_AFTER = timedelta(seconds=15)
# Rows published inline within this long are marked sent in one transaction. Nothing waits
# for a mark (a row stays in hand until then, and the relay loop leaves it alone): a longer
# window only means fewer transactions (PostgreSQL: 4.6 to 4.8 per saga, 5.7 at 10 ms).
_MARK_WINDOW_SECONDS = 0.1
# A publish not confirmed within this long has failed (a quorum queue without a leader may
# otherwise leave the confirmation pending for ever).
_PUBLISH_TIMEOUT_SECONDS = 30.0
# How long stopping waits for the last sent marks (a store that is away may never take them:
# those rows are published again after the restart, and consumers drop the copies).
_SETTLE_ON_STOP_SECONDS = 10.0


@dataclass
class Published:
    """What came of publishing some rows.

    Attributes:
        unpublished: The rows that did not go out (none when everything was confirmed).
        refusal: Why, when the broker is away or refused them; None when they were only
            unroutable (no queue bound yet), which the relay loop tries again later.
    """

    unpublished: list[OutboxRow] = field(default_factory=list)
    refusal: BaseException | None = None


class OutboxRelay:
    """Publishes a participant's outbox.

    Rows are published right after the transaction that wrote them commits; a background
    loop publishes whatever that missed (a crash, a broker outage, an unroutable event) and,
    on start, everything a previous run left pending.

    A row is *in hand* from the moment a handler writes it (``hold``) until its sent mark is
    written: the loop never publishes a row in hand, so a row that is only waiting for its
    mark (or for the inline publish after its commit) never goes out twice.
    """

    def __init__(
        self,
        store: Store,
        broker: RabbitBroker,
        exchange: RabbitExchange,
        *,
        participant: str,
        interval: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._exchange = exchange
        self._participant = participant
        self._interval = interval
        self._breaker = breaker
        self._task: asyncio.Task[None] | None = None
        self._in_hand: Counter[str] = Counter()
        # Rows this process let go of after a failed publish or mark: the next pass's.
        self._retry_soon: set[str] = set()
        self._marks = _SentMarks(store, self, breaker)

    # -- rows in hand ------------------------------------------------------------------

    def hold(self, event_ids: Iterable[str]) -> None:
        """Keep these rows from the relay loop until ``release``d (or marked sent)."""
        self._in_hand.update(event_ids)

    def release(self, event_ids: Iterable[str]) -> None:
        """Undo one ``hold`` of each of these rows."""
        for event_id in event_ids:
            count = self._in_hand[event_id] - 1
            if count > 0:
                self._in_hand[event_id] = count
            else:
                self._in_hand.pop(event_id, None)

    def in_hand(self, event_id: str) -> bool:
        """True while a handler or the sent marks own this row."""
        return event_id in self._in_hand

    # -- publishing --------------------------------------------------------------------

    async def publish(self, rows: Sequence[OutboxRow]) -> Published:
        """Publish these just-committed outbox rows now; they are marked sent soon after.

        Returns once the broker has confirmed them, or with the rows that did not go out.
        The rows are those the transaction wrote (``Store.finish`` returns them), so
        they go out without being read back; they are marked sent in the background, with
        other handlers' rows.
        """
        if not rows:
            return Published()
        ids = [row.event_id for row in rows]
        self.hold(ids)
        try:
            sent, outcome = await self._send(rows, inline=True)
        except BaseException:
            self.release(ids)
            raise
        # The marks own the published rows' hold now; the rest go back to the loop.
        self._marks.add(sent)
        self.give_up(row.event_id for row in outcome.unpublished)
        return outcome

    def give_up(self, event_ids: Iterable[str]) -> None:
        """``release`` rows whose publish or mark failed: the loop's next pass takes them."""
        ids = list(event_ids)
        self.release(ids)
        self._retry_soon.update(ids)

    async def retry_failed(self) -> int:
        """Publish the rows this process gave up on (that no one holds again)."""
        if not self._retry_soon:
            return 0
        ids, self._retry_soon = self._retry_soon, set()
        rows = await self._store.unsent_among(ids)
        return await self._send_unheld(rows)

    async def flush(self, *, older_than: timedelta | None = None) -> int:
        """Publish every pending row (older than ``older_than``) that no handler holds;
        returns how many went out."""
        rows = await self._store.pending_outbox(older_than=older_than)
        return await self._send_unheld(rows)

    async def _send_unheld(self, rows: Sequence[OutboxRow]) -> int:
        rows = [row for row in rows if row.event_id not in self._in_hand]
        if not rows:
            return 0
        ids = [row.event_id for row in rows]
        self.hold(ids)
        try:
            sent, outcome = await self._send(rows)
            if sent:
                await self._store.mark_sent(sent)
        finally:
            self.release(ids)
        self._retry_soon.update(row.event_id for row in outcome.unpublished)
        return len(sent)

    async def _send(
        self, rows: Sequence[OutboxRow], *, inline: bool = False
    ) -> tuple[list[str], Published]:
        # One saga's events go out in the order they were written (a compensated event
        # before the cancellation it leads to); different sagas' events go out concurrently.
        by_saga: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_saga.setdefault(row.saga_id, []).append(row)
        outcome = Published()
        if len(by_saga) == 1:
            [only] = by_saga.values()
            sent = await self._publish_in_order(only, outcome, inline=inline)
        else:
            batches = await asyncio.gather(
                *(self._publish_in_order(b, outcome, inline=inline) for b in by_saga.values())
            )
            sent = [event_id for batch in batches for event_id in batch]
        if sent and self._breaker is not None and self._breaker.is_open_for(Dependency.BROKER):
            self._breaker.close(Dependency.BROKER)  # it takes messages again
        if outcome.refusal is not None and self._breaker is not None:
            self._breaker.trip(Dependency.BROKER, outcome.refusal)
        return sent, outcome

    async def _publish_in_order(
        self, rows: Sequence[OutboxRow], outcome: Published, *, inline: bool
    ) -> list[str]:
        sent: list[str] = []
        for position, row in enumerate(rows):
            error = await self._publish_one(row, inline=inline)
            if error is not None:
                # A later event of the saga must not overtake this one.
                outcome.unpublished.extend(rows[position:])
                if outcome.refusal is None and broker_refused(error):
                    outcome.refusal = error
                break
            sent.append(row.event_id)
        return sent

    async def _publish_one(self, row: OutboxRow, *, inline: bool) -> BaseException | None:
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
                    timeout=_PUBLISH_TIMEOUT_SECONDS,
                    **row.properties,
                )
        except Exception as exc:
            # Unroutable (no queue bound yet) or the broker is away: the row stays pending.
            logger.error(
                "could not publish %s %s, will retry: %s", row.routing_key, row.event_id, exc
            )
            return exc
        EVENTS_PUBLISHED.labels(self._participant, row.routing_key).inc()
        return None

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """Publish what a previous run left pending, then keep watching the outbox."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._participant}-relay")

    async def settle(self) -> None:
        """Wait until the rows published so far are marked sent (or their marks failed)."""
        await self._marks.settle()

    async def stop(self) -> None:
        """Mark what was published (waiting a little for a store that is away), then stop
        the background loop."""
        try:
            await asyncio.wait_for(self._marks.settle(), _SETTLE_ON_STOP_SECONDS)
        except TimeoutError:
            logger.warning(
                "the store did not take the last sent marks: those events are published"
                " again after the restart (consumers drop the copies)"
            )
            await self._marks.abandon()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            breaker = self._breaker
            if breaker is not None and breaker.is_open:
                # The breaker's probes watch the store and the broker; passes would only fail.
                await asyncio.sleep(self._interval)
                continue
            try:
                # Even on the first pass: a row younger than this may belong to a message
                # being handled right now, whose inline publish would race this one.
                await self.flush(older_than=_STALE_AFTER)
                await self.retry_failed()
                backlog = await self._store.count_pending_outbox()
                OUTBOX_BACKLOG.labels(self._participant).set(backlog)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if breaker is not None and await breaker.store_away(exc):
                    breaker.trip(Dependency.STORE, exc)
                else:
                    logger.exception("outbox relay pass failed")
            await asyncio.sleep(self._interval)


class _SentMarks:
    """Marks published rows as sent, in the background, many handlers' rows per transaction.

    Marking is bookkeeping: a row left unmarked (a crash, a failed write) is published
    again by the relay loop, and consumers drop the copy by its event id. So no handler
    waits for it: a delivery is acked as soon as its events are confirmed, and the rows
    published within one short window share a transaction. The rows stay in hand until
    their mark is written; while the store is away, the marks wait for it instead of
    letting the relay loop publish the rows again.
    """

    def __init__(
        self,
        store: Store,
        relay: OutboxRelay,
        breaker: CircuitBreaker | None,
        *,
        window: float = _MARK_WINDOW_SECONDS,
    ) -> None:
        self._store = store
        self._relay = relay
        self._breaker = breaker
        self._window = window
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        self._pending.extend(event_ids)
        if self._task is None or self._task.done():
            # Not in the context of the handler that happened to start it (its saga).
            self._task = asyncio.create_task(
                self._drain(), name="sagakit-sent-marks", context=contextvars.Context()
            )

    async def settle(self) -> None:
        """Wait until every row added so far has been written (or its write has failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def abandon(self) -> None:
        """Stop waiting for the store: the pending rows go back to the relay loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._relay.give_up(self._pending)
        self._pending = []

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self._window)
            batch, self._pending = self._pending, []
            try:
                await self._store.mark_sent(batch)
            except Exception as exc:
                breaker = self._breaker
                if breaker is not None and await breaker.store_away(exc):
                    breaker.trip(Dependency.STORE, exc)
                    self._pending[:0] = batch
                    if not await breaker.wait_closed(at_most=60.0) and breaker.stopping:
                        return
                    continue
                logger.warning(
                    "could not mark %d published events as sent (the relay publishes them"
                    " again, and consumers drop the copies): %s",
                    len(batch),
                    exc,
                )
                self._relay.give_up(batch)
                continue
            self._relay.release(batch)
