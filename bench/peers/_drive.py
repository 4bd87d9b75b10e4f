"""Offering orders to a peer and timing them, as ``_load`` does for sagakit's services.

A peer is driven through one function, ``start``: it starts one saga and returns once the
driver knows how it ended. The figures come out as ``_load.PhaseResult``, computed by
``_load``'s own code, so that every system's table row means the same thing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from _load import Observer, PhaseResult, _result

from peers._saga import Order


@dataclass(frozen=True)
class Ended:
    """How a saga ended, and when (on the driver's clock; None: when ``start`` returned)."""

    outcome: str
    at: float | None = None


Start = Callable[[Order], Awaitable[Ended]]


class _Ends:
    """Collects the ends of sagas in the shape ``_load._result`` reads."""

    def __init__(self) -> None:
        self.observer = Observer(())
        self.outcomes: dict[str, str] = {}

    def record(self, order_id: str, ended: Ended, clock: Callable[[], float]) -> None:
        at = clock() if ended.at is None else ended.at
        self.observer.ended[order_id] = (at, ended.outcome)
        self.observer.events[order_id] = 1
        self.outcomes[order_id] = ended.outcome


async def full_speed(
    start: Start,
    orders: Sequence[tuple[Order, str]],
    *,
    in_flight: int,
    clock: Callable[[], float] = time.perf_counter,
    phase: str = "full speed",
) -> tuple[PhaseResult, dict[str, str]]:
    """Run ``orders`` (each with its expected outcome), at most ``in_flight`` at a time.

    Returns the phase's figures and every saga's outcome by order id.
    """
    ends = _Ends()
    started: dict[str, float] = {}
    slots = asyncio.Semaphore(in_flight)

    async def one(order: Order) -> None:
        try:
            ends.record(order["order_id"], await start(order), clock)
        finally:
            slots.release()

    tasks = []
    for order, _ in orders:
        await slots.acquire()
        started[order["order_id"]] = clock()
        tasks.append(asyncio.create_task(one(order)))
    await asyncio.gather(*tasks)
    expected = {order["order_id"]: outcome for order, outcome in orders}
    return _result(phase, ends.observer, started, expected), ends.outcomes


async def offered_rate(
    start: Start,
    orders: Sequence[tuple[Order, str]],
    *,
    rate: float,
    clock: Callable[[], float] = time.perf_counter,
    phase: str = "offered rate",
) -> tuple[PhaseResult, dict[str, str]]:
    """Start ``orders`` on a fixed schedule of ``rate`` per second, whatever is in flight."""
    loop = asyncio.get_running_loop()
    ends = _Ends()
    started: dict[str, float] = {}
    max_lag = 0.0

    async def one(order: Order) -> None:
        ends.record(order["order_id"], await start(order), clock)

    tasks = []
    begin = loop.time() + 0.05
    for index, (order, _) in enumerate(orders):
        target = begin + index / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, loop.time() - target)
        started[order["order_id"]] = clock()
        tasks.append(asyncio.create_task(one(order)))
    await asyncio.gather(*tasks)
    expected = {order["order_id"]: outcome for order, outcome in orders}
    result = _result(
        phase, ends.observer, started, expected, offered_rate=round(rate, 1), max_lag=max_lag
    )
    return result, ends.outcomes
