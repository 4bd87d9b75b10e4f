"""A participant's store goes away under sagas in flight, on the real broker: the sagas wait
and then end as they would have, none cancelled and nothing dead-lettered.

The probe flow's services run in-process. A store is taken away for real: a SQLite file on a
small ext4 volume made read-only (``sagakit_lab.volumes``), a SQLite file whose directory
is moved away, a private PostgreSQL cluster stopped with ``pg_ctl -m immediate``
(``sagakit_lab.postgres``). The retry budget covers well under a second of backoff; each
outage lasts several seconds, so a runtime that spent the budget on it would cancel the
sagas, and one that requeued would dead-letter them at the delivery limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from prometheus_client import REGISTRY
from sagakit import SagaService
from sagakit.observability._health import _passes, consuming_check, publishing_check, store_check
from sagakit.runtime import Dependency
from sagakit_lab.postgres import ClusterError, PostgresCluster
from sagakit_lab.volumes import SmallVolume, VolumeError
from sqlalchemy import text

from .probe_flow import Behaviour, Watch, probe_services, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# A step's budget: two retries 0.05-0.2 s apart. The breaker probes at least every 0.5 s.
SETTINGS: dict[str, Any] = {
    "step_retry_budget": 2,
    "compensation_retry_budget": 2,
    "retry_base_delay_seconds": 0.05,
    "retry_max_delay_seconds": 0.2,
    "outage_probe_max_delay_seconds": 0.5,
}
SAGAS = 6
OUTAGE_SECONDS = 5.0  # many times what the retry budget covers


@pytest.fixture
def volume() -> Iterator[SmallVolume]:
    try:
        with SmallVolume(size_mb=16) as mounted:
            yield mounted
    except VolumeError as exc:  # VolumeUnavailable included: not root, no loop devices
        pytest.skip(f"no small volume here: {exc}")


async def eventually(condition: Callable[[], bool], *, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def of_saga(watch: Watch, saga_id: str) -> list[str]:
    return [e["event_type"] for e in watch.events if e["context"]["saga_id"] == saga_id]


def ended(watch: Watch, saga_ids: list[str], terminal: str) -> bool:
    return all(terminal in of_saga(watch, saga) for saga in saga_ids)


def metric(name: str, participant: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"participant": participant, **labels}) or 0.0


async def assert_held(service: SagaService) -> None:
    """The breaker holds the service's deliveries, and readiness says so."""
    await eventually(lambda: service.runtime.breaker.is_open_for(Dependency.STORE))
    assert await _passes(store_check(service.store)) is False  # a write probe, not SELECT 1
    assert await _passes(consuming_check(service.runtime.breaker)) is False
    assert metric("sagakit_breaker_open", service.runtime.name, dependency="store") == 1


async def assert_nothing_parked(watch: Watch) -> None:
    for participant in ("alpha", "beta"):
        parked = await watch.dead_letters(participant)
        assert parked == [], [m.headers.get("x-saga-dead-letter-reason") for m in parked]


async def step_statuses(service: SagaService) -> dict[str, int]:
    """How many of the service's steps stand where (read after the service stopped)."""
    try:
        async with service.store.read() as session:
            rows = await session.execute(
                text("SELECT status, count(*) FROM sagakit_saga_steps GROUP BY status")
            )
            return {str(status): int(count) for status, count in rows}
    finally:
        await service.store.dispose()


async def test_sagas_wait_out_a_read_only_sqlite_store_then_complete(
    rabbitmq_url: str, tmp_path: Path, volume: SmallVolume
) -> None:
    behaviour = Behaviour()
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        databases={"alpha": f"sqlite+aiosqlite:///{volume.path}/alpha.db"},
        **SETTINGS,
    )
    alpha = services[0]
    paused_before = metric("sagakit_breaker_paused_seconds_total", "alpha", dependency="store")
    async with running(services), Watch(rabbitmq_url) as watch:
        await watch.start(subject="before")
        await watch.until("probe.finished")
        volume.read_only()

        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await assert_held(alpha)
        await asyncio.sleep(OUTAGE_SECONDS)
        # Nothing failed, nothing was cancelled, nothing went to a dead-letter queue.
        assert all(of_saga(watch, saga) == ["probe.started"] for saga in sagas)
        await assert_nothing_parked(watch)

        volume.writable()
        await eventually(lambda: ended(watch, sagas, "probe.finished"))
        await asyncio.sleep(0.3)  # anything that should not follow has its chance to show
        assert not alpha.runtime.breaker.is_open
        assert await _passes(store_check(alpha.store)) is True
        await assert_nothing_parked(watch)

    for saga in sagas:
        assert of_saga(watch, saga) == ["probe.started", "alpha.done", "probe.finished"]
    assert await step_statuses(alpha) == {"completed": SAGAS + 1}
    paused = metric("sagakit_breaker_paused_seconds_total", "alpha", dependency="store")
    assert paused - paused_before >= OUTAGE_SECONDS


async def test_a_compensation_waits_out_a_read_only_store_then_undoes(
    rabbitmq_url: str, tmp_path: Path, volume: SmallVolume
) -> None:
    gate = asyncio.Event()
    behaviour = Behaviour(second_fails=True, second_gate=gate)
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        databases={"alpha": f"sqlite+aiosqlite:///{volume.path}/alpha.db"},
        **SETTINGS,
    )
    alpha = services[0]
    async with running(services), Watch(rabbitmq_url) as watch:
        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await eventually(lambda: all("alpha.done" in of_saga(watch, s) for s in sagas))
        volume.read_only()
        gate.set()  # beta refuses every saga: alpha must undo its step, on a read-only store

        await eventually(lambda: all("beta.failed" in of_saga(watch, s) for s in sagas))
        await assert_held(alpha)
        await asyncio.sleep(OUTAGE_SECONDS)
        assert not any("alpha.undone" in of_saga(watch, s) for s in sagas)
        await assert_nothing_parked(watch)  # not parked as a compensation that keeps failing

        volume.writable()
        await eventually(lambda: ended(watch, sagas, "probe.cancelled"))
        await asyncio.sleep(0.3)
        await assert_nothing_parked(watch)

    for saga in sagas:
        assert of_saga(watch, saga) == [
            "probe.started",
            "alpha.done",
            "beta.failed",
            "alpha.undone",
            "probe.cancelled",
        ]
    cancellations = [e for e in watch.events if e["event_type"] == "probe.cancelled"]
    assert {e["payload"]["reason"] for e in cancellations} == {"rejected"}
    assert await step_statuses(alpha) == {"compensated": SAGAS}
    assert behaviour.calls["undo_first"] >= SAGAS


async def test_recording_a_step_failure_waits_out_a_read_only_store(
    rabbitmq_url: str, tmp_path: Path, volume: SmallVolume
) -> None:
    # beta's step fails for a business reason; recording that failure needs beta's store,
    # which cannot be written: the failure is recorded once it can, not turned into a
    # retry loop, a dead letter, or another reason.
    behaviour = Behaviour(second_fails=True)
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        databases={"beta": f"sqlite+aiosqlite:///{volume.path}/beta.db"},
        **SETTINGS,
    )
    beta = services[1]
    async with running(services), Watch(rabbitmq_url) as watch:
        volume.read_only()
        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await assert_held(beta)
        await asyncio.sleep(OUTAGE_SECONDS)
        assert all(of_saga(watch, saga) == ["probe.started", "alpha.done"] for saga in sagas)
        await assert_nothing_parked(watch)

        volume.writable()
        await eventually(lambda: ended(watch, sagas, "probe.cancelled"))
        await asyncio.sleep(0.3)
        await assert_nothing_parked(watch)

    failures = [e for e in watch.events if e["event_type"] == "beta.failed"]
    assert len(failures) == SAGAS
    assert {e["payload"]["reason"] for e in failures} == {"rejected"}  # not retries_exhausted
    assert await step_statuses(beta) == {"failed": SAGAS}


async def test_a_store_whose_directory_disappears_is_not_written_until_it_is_back(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    # Connections opened before keep writing to a removed file, which nobody would ever
    # read again: the store checks its file before each transaction.
    directory = tmp_path / "alpha-store"
    directory.mkdir()
    behaviour = Behaviour()
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        databases={"alpha": f"sqlite+aiosqlite:///{directory}/alpha.db"},
        **SETTINGS,
    )
    alpha = services[0]
    away = tmp_path / "alpha-store-moved"
    async with running(services), Watch(rabbitmq_url) as watch:
        await watch.start(subject="before")
        await watch.until("probe.finished")
        directory.rename(away)

        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await assert_held(alpha)
        await asyncio.sleep(2.0)
        assert all(of_saga(watch, saga) == ["probe.started"] for saga in sagas)

        away.rename(directory)
        await eventually(lambda: ended(watch, sagas, "probe.finished"))
        await assert_nothing_parked(watch)
    assert await step_statuses(alpha) == {"completed": SAGAS + 1}


async def test_held_deliveries_go_back_to_their_queue_without_counting_an_attempt(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    # Held longer than the hold limit, a delivery is republished to its queue and acked,
    # so it is never unacknowledged past the broker's consumer timeout; the copy is held
    # again, and the saga still completes once the store is back.
    directory = tmp_path / "alpha-store"
    directory.mkdir()
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        Behaviour(),
        databases={"alpha": f"sqlite+aiosqlite:///{directory}/alpha.db"},
        outage_hold_seconds=0.5,
        **SETTINGS,
    )
    alpha = services[0]
    handed_back_before = metric("sagakit_handed_back_total", "alpha")
    away = tmp_path / "alpha-store-moved"
    async with running(services), Watch(rabbitmq_url) as watch:
        await watch.start(subject="before")
        await watch.until("probe.finished")
        directory.rename(away)
        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await assert_held(alpha)
        await eventually(lambda: metric("sagakit_handed_back_total", "alpha") >= SAGAS * 3)

        away.rename(directory)
        await eventually(lambda: ended(watch, sagas, "probe.finished"))
        await assert_nothing_parked(watch)
    assert metric("sagakit_handed_back_total", "alpha") - handed_back_before >= SAGAS * 3
    assert await step_statuses(alpha) == {"completed": SAGAS + 1}


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    try:
        with PostgresCluster() as started:
            yield started
    except ClusterError as exc:
        pytest.skip(f"no private PostgreSQL cluster here: {exc}")


async def test_sagas_wait_out_a_postgresql_outage_then_complete(
    rabbitmq_url: str, tmp_path: Path, cluster: PostgresCluster
) -> None:
    alpha_url = await cluster.create_database_async("alpha")
    behaviour = Behaviour()
    services = probe_services(
        rabbitmq_url, str(tmp_path), behaviour, databases={"alpha": alpha_url}, **SETTINGS
    )
    alpha = services[0]
    async with running(services), Watch(rabbitmq_url) as watch:
        await watch.start(subject="before")
        await watch.until("probe.finished")
        await cluster.stop_async(mode="immediate")
        stopped = time.monotonic()

        sagas = [str((await watch.start(subject=f"s{n}")).context.saga_id) for n in range(SAGAS)]
        await assert_held(alpha)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        assert all(of_saga(watch, saga) == ["probe.started"] for saga in sagas)
        await assert_nothing_parked(watch)

        await cluster.start_async()
        await eventually(lambda: ended(watch, sagas, "probe.finished"))
        await asyncio.sleep(0.3)
        await assert_nothing_parked(watch)
        assert await _passes(store_check(alpha.store)) is True

    for saga in sagas:
        assert of_saga(watch, saga) == ["probe.started", "alpha.done", "probe.finished"]
    assert await step_statuses(alpha) == {"completed": SAGAS + 1}


async def test_a_delivery_whose_events_the_broker_refuses_is_held_unacked_not_failed(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    # A queue that takes nothing (max-length 0, reject-publish) bound to alpha.done: the
    # broker answers every publish of it with a negative confirmation, as it does for a
    # quorum queue that lost its majority. alpha's step commits; its delivery must stay
    # unacknowledged, with no attempt counted, until its event is confirmed.
    behaviour = Behaviour()
    services = probe_services(rabbitmq_url, str(tmp_path), behaviour, **SETTINGS)
    alpha = services[0]
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange("probe", aio_pika.ExchangeType.TOPIC, durable=True)
    refuser = await channel.declare_queue(
        f"refuses-{uuid.uuid4().hex[:8]}",
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    try:
        async with running(services), Watch(rabbitmq_url) as watch:
            await refuser.bind(exchange, routing_key="alpha.done")
            started = await watch.start(subject="refused")
            saga = str(started.context.saga_id)

            await eventually(lambda: alpha.runtime.breaker.is_open_for(Dependency.BROKER))
            await eventually(lambda: metric("sagakit_held_deliveries", "alpha") == 1)
            readiness: set[bool] = set()

            async def sample_publishing() -> None:
                readiness.add(await _passes(publishing_check(alpha.runtime.breaker)))

            while False not in readiness:
                await sample_publishing()
                await asyncio.sleep(0.01)
            # committed once, and the failure is not the step's: no retry, no failure event
            assert await step_statuses_live(alpha) == {"completed": 1}
            assert "alpha.failed" not in of_saga(watch, saga)

            await refuser.unbind(exchange, routing_key="alpha.done")
            await eventually(lambda: metric("sagakit_held_deliveries", "alpha") == 0)
            await eventually(lambda: "probe.finished" in of_saga(watch, saga))
            await eventually(lambda: not alpha.runtime.breaker.is_open)
            await assert_nothing_parked(watch)
            assert await _passes(publishing_check(alpha.runtime.breaker)) is True
    finally:
        # The session's virtual host outlives this test: never leave the refuser bound.
        await refuser.delete(if_unused=False, if_empty=False)
        await connection.close()
    # alpha.done reached beta (and the watch) with each refused attempt too: copies of one
    # event, which beta's inbox dropped; the step ran once, the saga finished once.
    assert len({e["event_id"] for e in watch.events if e["event_type"] == "alpha.done"}) == 1
    assert of_saga(watch, saga).count("probe.finished") == 1
    assert behaviour.calls == {"first": 1, "second": 1}


async def step_statuses_live(service: SagaService) -> dict[str, int]:
    async with service.store.read() as session:
        rows = await session.execute(
            text("SELECT status, count(*) FROM sagakit_saga_steps GROUP BY status")
        )
        return {str(status): int(count) for status, count in rows}


async def test_sagas_wait_out_a_full_disk_then_complete(
    rabbitmq_url: str, tmp_path: Path, volume: SmallVolume
) -> None:
    behaviour = Behaviour()
    services = probe_services(
        rabbitmq_url,
        str(tmp_path),
        behaviour,
        databases={"alpha": f"sqlite+aiosqlite:///{volume.path}/alpha.db"},
        **SETTINGS,
    )
    alpha = services[0]
    async with running(services), Watch(rabbitmq_url) as watch:
        await watch.start(subject="before")
        await watch.until("probe.finished")
        volume.fill()

        # Subjects large enough that the sagas' writes need new pages, not only the room
        # the write-ahead log already has.
        sagas = [
            str((await watch.start(subject=f"s{n}" + "x" * 20_000)).context.saga_id)
            for n in range(SAGAS)
        ]
        await eventually(lambda: alpha.runtime.breaker.is_open_for(Dependency.STORE))
        await asyncio.sleep(OUTAGE_SECONDS)
        assert not any("probe.cancelled" in of_saga(watch, saga) for saga in sagas)
        assert not any("alpha.failed" in of_saga(watch, saga) for saga in sagas)
        await assert_nothing_parked(watch)

        volume.free()
        await eventually(lambda: ended(watch, sagas, "probe.finished"))
        await asyncio.sleep(0.3)
        await assert_nothing_parked(watch)
    for saga in sagas:
        assert of_saga(watch, saga) == ["probe.started", "alpha.done", "probe.finished"]
    assert await step_statuses(alpha) == {"completed": SAGAS + 1}
