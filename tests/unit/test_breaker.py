"""The circuit breaker on its own: holding, probing with backoff, resuming, and its metrics."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

from prometheus_client import REGISTRY
from sagakit.runtime import CircuitBreaker, Dependency


class Flaky:
    """A probe that fails until ``back`` is set, counting its calls."""

    def __init__(self) -> None:
        self.back = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.back:
            raise ConnectionRefusedError("still away")


def breaker(probe: Flaky, *, max_delay: float = 0.05) -> tuple[CircuitBreaker, str]:
    name = f"unit-{uuid.uuid4().hex[:8]}"
    return (
        CircuitBreaker(
            name,
            probes={Dependency.STORE: probe, Dependency.BROKER: probe},
            probe_timeout=1.0,
            max_probe_delay=max_delay,
        ),
        name,
    )


def metric(name: str, participant: str, dependency: str = "store") -> float:
    value = REGISTRY.get_sample_value(name, {"participant": participant, "dependency": dependency})
    return value or 0.0


async def test_held_deliveries_resume_once_the_probe_answers() -> None:
    probe = Flaky()
    cut, name = breaker(probe)
    assert cut.is_open is False
    assert await cut.wait_closed(at_most=0.01) is True

    cut.trip(Dependency.STORE, ConnectionRefusedError("away"))
    assert cut.is_open
    assert cut.is_open_for(Dependency.STORE)
    assert not cut.is_open_for(Dependency.BROKER)
    assert metric("sagakit_breaker_open", name) == 1
    waiting = asyncio.create_task(cut.wait_closed(at_most=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # held while the probe fails
    assert probe.calls >= 2  # probed again and again

    probe.back = True
    assert await waiting is True
    assert not cut.is_open
    assert metric("sagakit_breaker_open", name) == 0
    assert metric("sagakit_breaker_trips_total", name) == 1
    assert metric("sagakit_breaker_paused_seconds_total", name) >= 0.3


async def test_a_second_trip_while_open_changes_nothing() -> None:
    probe = Flaky()
    cut, name = breaker(probe)
    cut.trip(Dependency.STORE, ConnectionRefusedError("away"))
    cut.trip(Dependency.STORE, ConnectionRefusedError("still away"))
    assert metric("sagakit_breaker_trips_total", name) == 1
    probe.back = True
    assert await cut.wait_closed(at_most=5) is True


async def test_both_dependencies_must_be_back_before_deliveries_resume() -> None:
    store, broker = Flaky(), Flaky()
    name = f"unit-{uuid.uuid4().hex[:8]}"
    cut = CircuitBreaker(
        name,
        probes={Dependency.STORE: store, Dependency.BROKER: broker},
        probe_timeout=1.0,
        max_probe_delay=0.05,
    )
    cut.trip(Dependency.STORE, ConnectionRefusedError())
    cut.trip(Dependency.BROKER, ConnectionRefusedError())
    store.back = True
    await asyncio.sleep(0.3)
    assert cut.is_open_for(Dependency.BROKER)
    assert not cut.is_open_for(Dependency.STORE)
    assert await cut.wait_closed(at_most=0.05) is False
    broker.back = True
    assert await cut.wait_closed(at_most=5) is True


async def test_a_successful_publish_closes_the_broker_side_at_once() -> None:
    probe = Flaky()
    cut, _ = breaker(probe, max_delay=60)
    cut.trip(Dependency.BROKER, ConnectionResetError())
    cut.close(Dependency.BROKER)
    assert not cut.is_open


async def test_probes_back_off_exponentially_up_to_the_maximum() -> None:
    probe = Flaky()
    cut, _ = breaker(probe, max_delay=0.2)
    cut.trip(Dependency.STORE, ConnectionRefusedError())
    await asyncio.sleep(1.0)
    # 0.05, 0.1, 0.2, 0.2, 0.2 ... : about 6 probes in a second, not one per loop turn
    assert 3 <= probe.calls <= 8
    await cut.stop()


async def test_stopping_wakes_held_deliveries_without_resuming() -> None:
    probe = Flaky()
    cut, _ = breaker(probe)
    cut.trip(Dependency.STORE, ConnectionRefusedError())
    waiting = asyncio.create_task(cut.wait_closed(at_most=10))
    await asyncio.sleep(0.05)
    await cut.stop()
    assert await waiting is False
    assert cut.stopping
    cut.trip(Dependency.BROKER, ConnectionRefusedError())  # ignored once stopping
    assert not cut.is_open_for(Dependency.BROKER)


async def test_a_possible_store_error_is_decided_by_asking_the_store() -> None:
    probe = Flaky()
    cut, _ = breaker(probe)
    full = sqlite3.OperationalError("database or disk is full")
    assert await cut.store_away(full) is True
    assert probe.calls == 0  # the type alone says so
    assert await cut.store_away(ValueError("bad input")) is False
    assert probe.calls == 0

    # A refused connection: the store's, or a call the handler made elsewhere?
    assert await cut.store_away(ConnectionRefusedError()) is True  # the store is away too
    probe.back = True
    assert await cut.store_away(ConnectionRefusedError()) is False  # the step's own call
    assert probe.calls == 2
