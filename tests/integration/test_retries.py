"""Retries with backoff through delay queues, exhausted budgets, parking and deadlines,
on the real broker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from aio_pika.abc import AbstractIncomingMessage
from sagakit import SagaContext, utc_now

from .probe_flow import Behaviour, Watch, probe_services, running

pytestmark = pytest.mark.integration


async def test_a_transient_failure_is_retried_with_backoff_then_succeeds(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour(first_transient=2)
    async with (
        running(probe_services(rabbitmq_url, str(tmp_path), behaviour)),
        Watch(rabbitmq_url) as watch,
    ):
        began = time.monotonic()
        await watch.start()
        assert await watch.until("probe.finished") == [
            "probe.started",
            "alpha.done",
            "probe.finished",
        ]
        # two delays of at least base/2 (0.025 s) and 2*base/2 (0.05 s)
        assert time.monotonic() - began >= 0.075
    assert behaviour.calls["first"] == 3


async def test_an_exhausted_retry_budget_fails_the_step_and_compensation_runs(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour(second_transient=100)
    async with (
        running(probe_services(rabbitmq_url, str(tmp_path), behaviour)),
        Watch(rabbitmq_url) as watch,
    ):
        await watch.start()
        types = await watch.until("probe.cancelled")
    assert types == [
        "probe.started",
        "alpha.done",
        "beta.failed",
        "alpha.undone",
        "probe.cancelled",
    ]
    failed = watch.events[2]
    assert failed["payload"]["reason"] == "retries_exhausted"
    assert behaviour.calls["second"] == 3  # first try + a budget of 2
    assert watch.events[-1]["payload"] == {"failed_step": "second", "reason": "retries_exhausted"}


async def test_a_compensation_that_keeps_failing_is_parked_with_its_reason(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour(second_fails=True, undo_transient=100)
    async with (
        running(probe_services(rabbitmq_url, str(tmp_path), behaviour)),
        Watch(rabbitmq_url) as watch,
    ):
        started = await watch.start()
        await watch.until("beta.failed")
        deadline = time.monotonic() + 10
        parked: list[AbstractIncomingMessage] = []
        # This saga's only: the session's virtual host keeps what other tests parked.
        while not parked and time.monotonic() < deadline:
            parked = [
                m
                for m in await watch.dead_letters("alpha")
                if m.correlation_id == str(started.context.saga_id)
            ]
        assert len(parked) == 1
        reason = parked[0].headers["x-saga-dead-letter-reason"]
        assert str(reason).startswith("compensation_failed: TransientError: cannot undo yet")
        assert parked[0].headers["x-saga-origin-queue"] == "alpha.beta.failed"
        assert "alpha.undone" not in watch.types()
    assert behaviour.calls["undo_first"] == 3


async def test_forward_work_past_the_deadline_fails_the_step(
    rabbitmq_url: str, tmp_path: object
) -> None:
    behaviour = Behaviour()
    async with (
        running(probe_services(rabbitmq_url, str(tmp_path), behaviour)),
        Watch(rabbitmq_url) as watch,
    ):
        late = SagaContext.start("probe", deadline=utc_now() - timedelta(seconds=1))
        await watch.start(context=late)
        types = await watch.until("probe.cancelled")
    assert types == ["probe.started", "alpha.failed", "probe.cancelled"]
    assert watch.events[1]["payload"]["reason"] == "deadline_exceeded"
    assert "first" not in behaviour.calls  # the handler never ran
