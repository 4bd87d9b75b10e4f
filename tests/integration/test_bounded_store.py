"""Bounded stores on the real broker: participants with a retention of a fraction of a
second run wave after wave of sagas, and their SQLite files stop growing after the first
wave, because each prune pass frees pages that the next wave's rows reuse."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import REGISTRY
from sagakit import SagaService
from sagakit.store import StoreSize, store_size
from sagakit.store._store import inbox, outbox, saga_steps

from .probe_flow import Behaviour, Watch, probe_services, running

pytestmark = pytest.mark.integration

TABLES = (inbox.name, outbox.name, saga_steps.name)
SECOND_IN_DAYS = 1 / 86400


def _sample(name: str, service: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": service, **labels}) or 0.0


def _sagas_finished(watch: Watch) -> int:
    ended = {e["context"]["saga_id"] for e in watch.events if e["event_type"] == "probe.finished"}
    return len(ended)


async def _finished(watch: Watch, count: int) -> None:
    async with asyncio.timeout(60):
        while _sagas_finished(watch) < count:
            await asyncio.sleep(0.05)


async def _quiet(services: list[SagaService]) -> None:
    """Wait until no event can come again: every outbox row marked sent, and a relay pass
    that may have read a row just before its mark has had time to finish.

    A retention of a fraction of a second is far below the window in which the relay may
    publish an event a second time (a row unmarked for 2 s goes out again); pruning within
    it would let the copy run a step again, which is why the settings refuse a retention
    below a day outside local development. The test prunes only once that window is shut.
    """
    async with asyncio.timeout(30):
        for service in services:
            await service.runtime.relay.settle()
            while True:
                if not await service.store.count_pending_outbox():
                    break
                await asyncio.sleep(0.1)
    await asyncio.sleep(2 * services[0].settings.relay_interval_seconds)


async def _pruned_empty(service: SagaService) -> StoreSize:
    """Prune (the pass the background task runs) until retention has taken every row."""
    async with asyncio.timeout(30):
        while True:
            await service.runtime.pruner.run_once()
            if not any((await service.store.count_rows()).values()):
                return await store_size(service.store, TABLES)
            await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_wave_after_wave_of_sagas_leaves_the_store_the_same_size(
    rabbitmq_url: str, tmp_path: object
) -> None:
    per_wave, waves = 250, 4
    behaviour = Behaviour()
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        retention_days=0.2 * SECOND_IN_DAYS,
        step_log_retention_days=0.2 * SECOND_IN_DAYS,
        # passes are run by the test between waves, so that every wave peaks at a full wave
        prune_interval_seconds=3600,
    )
    sizes: dict[str, list[StoreSize]] = {s.runtime.name: [] for s in services}
    async with running(services), Watch(rabbitmq_url) as watch:
        for wave in range(waves):
            await asyncio.gather(*(watch.start(f"w{wave}-{n}") for n in range(per_wave)))
            await _finished(watch, per_wave * (wave + 1))
            await _quiet(services)
            for service in services:
                sizes[service.runtime.name].append(await _pruned_empty(service))
        finished = _sagas_finished(watch)
    # every saga ended, and no step ran twice (the watch may see an event twice: a relay
    # publishes again a row whose sent mark came late, and consumers drop the copy)
    assert finished == per_wave * waves
    assert behaviour.calls == {"first": per_wave * waves, "second": per_wave * waves}

    for name, measured in sizes.items():
        first = measured[0]
        assert first.used_bytes is not None
        for later in measured[1:]:
            # the freed pages took the next wave: no more than a few pages of slack
            assert later.file_bytes <= first.file_bytes * 1.1, (name, measured)
        # every row of every wave went through retention
        for table in (inbox.name, outbox.name, saga_steps.name):
            assert _sample("sagakit_store_pruned_rows_total", name, table=table) >= (
                per_wave * waves
            )
            assert _sample("sagakit_store_rows", name, table=table) == 0


async def test_the_background_task_prunes_by_itself(rabbitmq_url: str, tmp_path: object) -> None:
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        Behaviour(),
        retention_days=0.2 * SECOND_IN_DAYS,
        prune_interval_seconds=0.2,
    )
    async with running(services), Watch(rabbitmq_url) as watch:
        alpha = services[0]
        passes_before = _sample("sagakit_store_last_prune_timestamp_seconds", "alpha")
        await asyncio.gather(*(watch.start(f"s{n}") for n in range(20)))
        await _finished(watch, 20)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                while True:
                    rows = await alpha.store.count_rows()
                    if not rows[inbox.name] and not rows[outbox.name]:
                        break
                    await asyncio.sleep(0.1)
        rows = await alpha.store.count_rows()
    assert rows[inbox.name] == 0
    assert rows[outbox.name] == 0
    assert rows[saga_steps.name] == 20  # no step-log retention set: kept
    assert _sample("sagakit_store_last_prune_timestamp_seconds", "alpha") > passes_before
