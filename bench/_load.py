"""Offering sagas to a flow and timing them: full speed, or at a fixed rate.

Both systems (sagakit's services and the null saga) are driven and observed by the same
code, so that the driver's own CPU, which shares the machine, weighs on both alike.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sagakit import Envelope
from sagakit.client import SagaClient


class Observer:
    """Counts every event on the flow's exchange per saga; notes each saga's end.

    A queue of its own, bound with ``#``, sees every message once. The saga is the AMQP
    correlation id (the wire contract sets it to the saga id) and the end is a terminal
    routing key: nothing is decoded, so observing costs both systems the same.
    """

    def __init__(self, terminal: Iterable[str]) -> None:
        self.terminal = frozenset(terminal)
        self.events: dict[str, int] = {}
        self.timeline: dict[str, list[tuple[float, str]]] = {}
        self.ended: dict[str, tuple[float, str]] = {}
        self.on_end: Callable[[str], object] | None = None
        self._waiting: set[str] = set()
        self._all_ended = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None

    async def attach(self, url: str, exchange: str) -> None:
        """Connect to ``url`` and start watching ``exchange``."""
        self._connection = await aio_pika.connect_robust(url)
        channel = await self._connection.channel(publisher_confirms=False)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    async def close(self) -> None:
        """Stop watching."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        saga_id = message.correlation_id or ""
        self.events[saga_id] = self.events.get(saga_id, 0) + 1
        self.timeline.setdefault(saga_id, []).append((now, str(message.routing_key)))
        if message.routing_key in self.terminal and saga_id not in self.ended:
            self.ended[saga_id] = (now, str(message.routing_key))
            if self.on_end is not None:
                self.on_end(saga_id)
            self._waiting.discard(saga_id)
            if not self._waiting:
                self._all_ended.set()

    async def wait_all(self, saga_ids: Iterable[str], *, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every saga of ``saga_ids`` has ended."""
        self._waiting = {s for s in saga_ids if s not in self.ended}
        if not self._waiting:
            return
        self._all_ended.clear()
        try:
            await asyncio.wait_for(self._all_ended.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._waiting)} saga(s) did not end within {timeout:g}s"
            ) from None


@dataclass
class PhaseResult:
    """What one phase measured."""

    phase: str
    sagas: int
    seconds: float
    sagas_per_second: float
    events: int
    events_per_second: float
    latency_ms: dict[str, float]
    offered_rate: float | None = None
    max_schedule_lag_ms: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    unexpected_outcomes: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_by_outcome_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (sorted or not)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _result(
    phase: str,
    observer: Observer,
    started: dict[str, float],
    expected: dict[str, str],
    *,
    offered_rate: float | None = None,
    max_lag: float | None = None,
) -> PhaseResult:
    ends = {s: observer.ended[s] for s in started}
    first = min(started.values())
    last = max(end for end, _ in ends.values())
    seconds = last - first
    latencies = [(ends[s][0] - started[s]) * 1000 for s in started]
    # A cancelled saga takes more hops than a fulfilled one (up to eight): its latency is
    # not comparable with the null saga's four.
    by_outcome: dict[str, list[float]] = {}
    for saga_id, start in started.items():
        end, terminal = ends[saga_id]
        by_outcome.setdefault(terminal, []).append((end - start) * 1000)
    outcomes: dict[str, int] = {}
    for _, terminal in ends.values():
        outcomes[terminal] = outcomes.get(terminal, 0) + 1
    events = sum(observer.events.get(s, 0) for s in started)
    # Where the time goes: from one event of a saga to the next, by pair of event types.
    gaps: dict[str, list[float]] = {}
    for saga_id, start in started.items():
        previous, before = start, "publish"
        for at, event_type in observer.timeline.get(saga_id, []):
            gaps.setdefault(f"{before} -> {event_type}", []).append((at - previous) * 1000)
            previous, before = at, event_type
    hops = {
        pair: {
            "n": len(values),
            "p50": round(percentile(values, 0.5), 1),
            "p99": round(percentile(values, 0.99), 1),
        }
        for pair, values in sorted(gaps.items())
        if len(values) >= 5
    }
    return PhaseResult(
        phase=phase,
        sagas=len(started),
        seconds=round(seconds, 3),
        sagas_per_second=round(len(started) / seconds, 1),
        events=events,
        events_per_second=round(events / seconds, 1),
        latency_ms={
            "p50": round(percentile(latencies, 0.50), 1),
            "p95": round(percentile(latencies, 0.95), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies), 1),
        },
        offered_rate=offered_rate,
        max_schedule_lag_ms=None if max_lag is None else round(max_lag * 1000, 1),
        outcomes=outcomes,
        unexpected_outcomes=sum(1 for s, (_, t) in ends.items() if expected[s] != t),
        hops_ms=hops,
        latency_by_outcome_ms={
            terminal: {
                "n": len(values),
                "p50": round(percentile(values, 0.50), 1),
                "p95": round(percentile(values, 0.95), 1),
                "p99": round(percentile(values, 0.99), 1),
            }
            for terminal, values in sorted(by_outcome.items())
        },
    )


def _saga_id(envelope: Envelope[Any]) -> str:
    return str(envelope.context.saga_id)


async def full_speed(
    client: SagaClient,
    observer: Observer,
    sagas: Sequence[tuple[Envelope[Any], str]],
    *,
    in_flight: int,
    timeout: float,  # noqa: ASYNC109
    phase: str = "full speed",
) -> PhaseResult:
    """Start ``sagas`` as fast as confirms allow, at most ``in_flight`` unfinished at once.

    Each item is the start event and the terminal event it is expected to end with.
    """
    started: dict[str, float] = {}
    slots = asyncio.Semaphore(in_flight)

    def release(saga_id: str) -> None:
        if saga_id in started:
            slots.release()

    observer.on_end = release
    publishing: set[asyncio.Task[None]] = set()
    try:
        for envelope, _ in sagas:
            await slots.acquire()
            started[_saga_id(envelope)] = time.perf_counter()
            task = asyncio.create_task(client.publish(envelope))
            publishing.add(task)
            task.add_done_callback(publishing.discard)
        await asyncio.gather(*publishing)
        await observer.wait_all(started, timeout=timeout)
    finally:
        observer.on_end = None
    expected = {_saga_id(e): t for e, t in sagas}
    return _result(phase, observer, started, expected)


async def offered_rate(
    client: SagaClient,
    observer: Observer,
    sagas: Sequence[tuple[Envelope[Any], str]],
    *,
    rate: float,
    timeout: float,  # noqa: ASYNC109
    phase: str = "offered rate",
) -> PhaseResult:
    """Start ``sagas`` on a fixed schedule of ``rate`` per second, whatever is in flight."""
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}
    publishing: set[asyncio.Task[None]] = set()
    max_lag = 0.0
    begin = loop.time() + 0.05
    for index, (envelope, _) in enumerate(sagas):
        target = begin + index / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, loop.time() - target)
        started[_saga_id(envelope)] = time.perf_counter()
        task = asyncio.create_task(client.publish(envelope))
        publishing.add(task)
        task.add_done_callback(publishing.discard)
    await asyncio.gather(*publishing)
    await observer.wait_all(started, timeout=timeout)
    expected = {_saga_id(e): t for e, t in sagas}
    return _result(phase, observer, started, expected, offered_rate=round(rate, 1), max_lag=max_lag)
