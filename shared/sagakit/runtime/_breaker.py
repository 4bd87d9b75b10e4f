"""The circuit breaker: a participant holds its deliveries while its store or the broker is away.

An outage is not a step failure. When the runtime finds that a dependency it needs is away
(``_outage.py`` classifies the error), it trips the breaker for that dependency: every
delivery being handled, and every one that arrives, waits unacknowledged instead of spending
its retry budget or being requeued (a RabbitMQ 3.10 quorum queue counts each requeue toward
its delivery limit, so a requeue loop during an outage ends in the dead-letter queue). A probe
asks the dependency again with exponential backoff (the store with a real write, the broker
with a ping); when it answers, the breaker closes and the held deliveries run again from the
start, as if they had just arrived.

The broker's prefetch bounds how many deliveries are held. A delivery held longer than the
hold limit is put back on its queue by a publish (which resets no counter the broker keeps)
and acked, so that no delivery stays unacknowledged past the broker's consumer timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum

from sagakit.observability._metrics import BREAKER_OPEN, BREAKER_PAUSED_SECONDS, BREAKER_TRIPS
from sagakit.runtime._outage import Verdict, store_verdict

logger = logging.getLogger("sagakit.breaker")

Probe = Callable[[], Awaitable[None]]
"""Returns when the dependency answers; raises (or times out) while it is away."""

# The first probe comes soon (a restarted database answers within a second); then the
# delay doubles, up to the breaker's maximum. A breaker that opens again soon after it
# opened before (a store that answers the probe but fails real writes, such as a full disk
# whose journal still has room for the probe; a broker that answers a ping but refuses
# the events of one queue) starts its probing where the last one was.
_FIRST_PROBE_DELAY_SECONDS = 0.05
_STREAK_MEMORY_SECONDS = 60.0
_STILL_AWAY_LOG_SECONDS = 30.0


class Dependency(StrEnum):
    """What a participant cannot work without."""

    STORE = "store"
    BROKER = "broker"


class Outage(Exception):
    """Raised inside the runtime when handling stopped because a dependency is away."""

    def __init__(self, dependency: Dependency, cause: BaseException) -> None:
        super().__init__(f"{dependency.value} unavailable: {type(cause).__name__}: {cause}")
        self.dependency = dependency
        self.cause = cause


class CircuitBreaker:
    """Holds a participant's deliveries while a dependency is away; probes it; resumes.

    Args:
        participant: The participant's name, for logs and metrics.
        probes: How to ask each dependency whether it is back.
        probe_timeout: A probe that takes longer has failed.
        max_probe_delay: The longest pause between two probes.
    """

    def __init__(
        self,
        participant: str,
        *,
        probes: Mapping[Dependency, Probe],
        probe_timeout: float,
        max_probe_delay: float,
    ) -> None:
        self._participant = participant
        self._probes = dict(probes)
        self._probe_timeout = probe_timeout
        self._max_probe_delay = max_probe_delay
        self._open: dict[Dependency, float] = {}
        self._accounted: dict[Dependency, float] = {}
        self._tasks: dict[Dependency, asyncio.Task[None]] = {}
        self._closed: asyncio.Event | None = None
        self._streak = 0
        self._last_trip = -_STREAK_MEMORY_SECONDS
        self._stopping = False
        for dependency in Dependency:
            BREAKER_OPEN.labels(participant, dependency.value).set(0)

    @property
    def is_open(self) -> bool:
        """True while any dependency is away."""
        return bool(self._open)

    @property
    def stopping(self) -> bool:
        """True once ``stop`` was called."""
        return self._stopping

    def is_open_for(self, dependency: Dependency) -> bool:
        """True while ``dependency`` is away."""
        return dependency in self._open

    def open_for_seconds(self) -> float:
        """How long the breaker has been open (0 when closed)."""
        if not self._open:
            return 0.0
        return time.monotonic() - min(self._open.values())

    def trip(self, dependency: Dependency, cause: BaseException) -> None:
        """Hold deliveries until ``dependency`` answers a probe again."""
        if dependency in self._open or self._stopping:
            return
        now = time.monotonic()
        self._open[dependency] = now
        self._accounted[dependency] = now
        if now - self._last_trip > _STREAK_MEMORY_SECONDS:
            self._streak = 0
        self._streak += 1
        self._last_trip = now
        self._event().clear()
        BREAKER_OPEN.labels(self._participant, dependency.value).set(1)
        BREAKER_TRIPS.labels(self._participant, dependency.value).inc()
        logger.warning(
            "%s unavailable (%s: %s): holding deliveries until it answers",
            dependency.value,
            type(cause).__name__,
            str(cause)[:300],
        )
        # A context of its own: the probe outlives the delivery that tripped the breaker,
        # and its log lines must not carry that delivery's saga.
        self._tasks[dependency] = asyncio.create_task(
            self._probe(dependency),
            name=f"{self._participant}-probe-{dependency.value}",
            context=contextvars.Context(),
        )

    def close(self, dependency: Dependency) -> None:
        """``dependency`` answers again: resume (once no other dependency is away)."""
        since = self._open.pop(dependency, None)
        if since is None:
            return
        self._account(dependency)
        self._accounted.pop(dependency, None)
        task = self._tasks.pop(dependency, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        BREAKER_OPEN.labels(self._participant, dependency.value).set(0)
        logger.warning(
            "%s answers again after %.1f s: resuming deliveries",
            dependency.value,
            time.monotonic() - since,
        )
        if not self._open:
            self._event().set()

    async def store_away(self, error: BaseException) -> bool:
        """Whether ``error`` means the store is away: by its type, or, when the type
        leaves it open (a timeout, a refused connection), by asking the store now."""
        verdict = store_verdict(error)
        if verdict is Verdict.DEFINITE:
            return True
        if verdict is Verdict.NO or Dependency.STORE not in self._probes:
            return False
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._probes[Dependency.STORE]()
        except Exception:
            return True
        return False

    async def wait_closed(self, *, at_most: float) -> bool:
        """Wait until every dependency is back; False after ``at_most`` seconds or when
        stopping."""
        if not self._open:
            return True
        if self._stopping:
            return False
        try:
            async with asyncio.timeout(at_most):
                await self._event().wait()
        except TimeoutError:
            return False
        return not self._stopping

    async def stop(self) -> None:
        """Wake every held delivery (they are handed back) and stop probing."""
        self._stopping = True
        self._event().set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
            if not self._open:
                self._closed.set()
        return self._closed

    def _account(self, dependency: Dependency) -> None:
        last = self._accounted.get(dependency)
        if last is None:
            return
        now = time.monotonic()
        BREAKER_PAUSED_SECONDS.labels(self._participant, dependency.value).inc(now - last)
        self._accounted[dependency] = now

    async def _probe(self, dependency: Dependency) -> None:
        delay = min(
            self._max_probe_delay, _FIRST_PROBE_DELAY_SECONDS * 2 ** max(0, self._streak - 1)
        )
        probe = self._probes[dependency]
        last_log = time.monotonic()
        while dependency in self._open:
            await asyncio.sleep(delay)
            self._account(dependency)
            try:
                async with asyncio.timeout(self._probe_timeout):
                    await probe()
            except Exception as exc:
                logger.debug("%s probe failed: %r", dependency.value, exc)
                delay = min(self._max_probe_delay, delay * 2)
                if time.monotonic() - last_log >= _STILL_AWAY_LOG_SECONDS:
                    last_log = time.monotonic()
                    logger.warning(
                        "%s still unavailable after %.0f s (%s): deliveries held",
                        dependency.value,
                        time.monotonic() - self._open.get(dependency, last_log),
                        type(exc).__name__,
                    )
                continue
            self.close(dependency)
            return
