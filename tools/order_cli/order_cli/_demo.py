"""``saga demo``: run the four services, push a mix of orders through, report how each ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from order_contracts.spec import ORDER_SAGA
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sagakit import BrokerUnavailable, Envelope, SagaError
from sagakit.broker import throwaway_vhost, vhost_of
from sagakit.cli import EXIT_IN_USE
from sagakit.client import EventWatch, SagaClient, WatchTimeout
from sagakit.testing import (
    QueueProbe,
    ServiceApp,
    ServiceProcesses,
    ServiceStartError,
    consumed_queues,
)

from ._common import (
    DEFAULT_URL,
    SagaEnd,
    UrlOption,
    broker_exit_code,
    broker_unavailable_line,
)

# Orders in flight while publishing: enough to hide the confirm round trips.
_PUBLISH_CONCURRENCY = 64
DEMO_VHOST_PREFIX = "saga-demo-"


@dataclass(frozen=True, slots=True)
class DemoSaga:
    """One order of the demo: what it was built to do, and what it did."""

    scenario: Scenario
    end: SagaEnd

    @property
    def expected_outcome(self) -> str:
        """``fulfilled`` or ``cancelled``, as the scenario's rules say."""
        return "fulfilled" if EXPECTED_FAILED_STEP[self.scenario] is None else "cancelled"

    @property
    def as_expected(self) -> bool:
        """True when the saga ended the way its scenario says."""
        return (
            self.end.outcome == self.expected_outcome
            and self.end.failed_step == EXPECTED_FAILED_STEP[self.scenario]
        )

    def as_json(self) -> dict[str, Any]:
        """The row of the table, as JSON."""
        return {
            "saga_id": str(self.end.saga_id),
            "scenario": self.scenario.value,
            "outcome": self.end.outcome,
            "failed_step": self.end.failed_step,
            "reason": self.end.reason,
            "expected_failed_step": EXPECTED_FAILED_STEP[self.scenario],
            "as_expected": self.as_expected,
            "events": len(self.end.events),
            "duration_ms": _round(self.end.duration_ms),
        }


@dataclass(frozen=True, slots=True)
class DemoReport:
    """Every saga of a demo run and the figures over all of them."""

    sagas: list[DemoSaga]
    wall_seconds: float
    log_dir: Path | None

    @property
    def ok(self) -> bool:
        """True when every saga ended, each as its scenario expected."""
        return all(saga.as_expected for saga in self.sagas)

    def summary(self) -> dict[str, Any]:
        """Counts per outcome and failed step, throughput and latency percentiles."""
        ended = [s for s in self.sagas if s.end.outcome != "pending"]
        durations = sorted(s.end.duration_ms for s in ended if s.end.duration_ms is not None)
        outcomes = Counter(s.end.outcome for s in self.sagas)
        failed_steps = Counter(s.end.failed_step for s in ended if s.end.failed_step)
        return {
            "orders": len(self.sagas),
            "outcomes": {name: outcomes.get(name, 0) for name in ("fulfilled", "cancelled")},
            "pending": outcomes.get("pending", 0),
            "failed_steps": {
                step.name: failed_steps.get(step.name, 0) for step in ORDER_SAGA.steps
            },
            "unexpected": sum(1 for s in self.sagas if not s.as_expected),
            "wall_time_s": round(self.wall_seconds, 3),
            "sagas_per_s": round(len(ended) / self.wall_seconds, 1) if self.wall_seconds else None,
            "latency_ms": {"p50": _percentile(durations, 50), "p95": _percentile(durations, 95)},
        }

    def as_json(self) -> dict[str, Any]:
        """The whole report as JSON."""
        return {
            "sagas": [saga.as_json() for saga in self.sagas],
            "summary": self.summary(),
            "log_dir": str(self.log_dir) if self.log_dir else None,
        }


def _percentile(values: list[float], percent: float) -> float | None:
    # Nearest rank: an observed value, meaningful even for a handful of sagas.
    if not values:
        return None
    return _round(values[max(0, math.ceil(percent / 100 * len(values)) - 1)])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def demo_services() -> dict[str, ServiceApp]:
    """Each participant of the order flow, as ``<name>_service.main:create_app``."""
    return {
        name: ServiceApp(name, f"{name}_service.main:create_app")
        for name in ORDER_SAGA.participants()
    }


def scenarios_for(orders: int) -> list[Scenario]:
    """The first six orders cover every kind; after them, two in three are fulfilled and
    the rest cycle through the failures, as a shop's day might look."""
    kinds = list(Scenario)
    failures = [kind for kind in kinds if kind is not Scenario.FULFILLED]
    chosen = kinds[:orders]
    for number in range(orders - len(chosen)):
        failure = failures[(number // 3) % len(failures)]
        chosen.append(failure if number % 3 == 2 else Scenario.FULFILLED)
    return chosen


async def run_demo(
    *,
    orders: int,
    url: str,
    start_services: bool,
    isolated: bool = True,
    wait_seconds: float,
    status: Console,
    show_progress: bool,
) -> DemoReport:
    """Start the services (unless told not to), publish ``orders`` orders, collect the ends.

    Started services run on a virtual host of their own when one can be made (``isolated``),
    deleted afterwards; else on ``url``'s, only when nothing else consumes from their queues.

    Raises:
        BrokerUnavailable: Before anything is started, when no broker answers.
        QueuesInUse: Another consumer is on a queue the demo needs.
    """
    async with contextlib.AsyncExitStack() as stack:
        probe = QueueProbe(url)
        stack.push_async_callback(probe.close)
        await probe.open()  # no broker: say so before anything else
        run_url = url
        if start_services and isolated:
            made = await stack.enter_async_context(throwaway_vhost(url, prefix=DEMO_VHOST_PREFIX))
            if made.url is not None:
                run_url = made.url
                status.print(
                    f"virtual host {made.vhost} of its own (made with {made.made_by}; "
                    "deleted at the end)",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                status.print(
                    f"no virtual host of its own ({'; '.join(made.tried)}): running on "
                    f"{vhost_of(url)!r}, where nothing else may consume from the demo's queues",
                    highlight=False,
                    soft_wrap=True,
                )
        shared = run_url == url
        if start_services and shared:
            await _require_no_consumers(probe, url)
        client = await stack.enter_async_context(
            SagaClient(run_url, ORDER_SAGA, producer="saga-demo")
        )
        log_dir: Path | None = None
        if start_services:
            log_dir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
            processes = ServiceProcesses(
                demo_services(),
                spec=ORDER_SAGA,
                url=run_url,
                log_dir=log_dir,
                service_env={
                    name: {
                        f"{name.upper()}_DATABASE_URL": f"sqlite+aiosqlite:///{log_dir / name}.db"
                    }
                    for name in ORDER_SAGA.participants()
                },
            )
            stack.push_async_callback(processes.stop)
            status.print(
                f"starting {', '.join(processes.names)} (logs and databases in {log_dir}) …",
                highlight=False,
                soft_wrap=True,
            )
            began = time.perf_counter()
            await processes.start(timeout=90)
            if shared:
                # Readiness counted consumers: prove every one of them is ours.
                await _require_own_consumers(probe, url)
            status.print(f"services consuming after {time.perf_counter() - began:.1f}s")
        else:
            await _require_consumers(url)
        watch = await stack.enter_async_context(client.watch())
        kinds = scenarios_for(orders)
        began = time.perf_counter()
        started = await _publish(client, kinds)
        seen = await _wait(
            watch, started, wait_seconds=wait_seconds, status=status, progress=show_progress
        )
        wall = time.perf_counter() - began
    sagas = [
        DemoSaga(kind, SagaEnd.read(envelope, seen.get(envelope.context.saga_id, [])))
        for kind, envelope in zip(kinds, started, strict=True)
    ]
    return DemoReport(sagas=sagas, wall_seconds=wall, log_dir=log_dir)


class QueuesInUse(SagaError):
    """Another consumer is on a queue the demo's services need: it would take their orders."""


def _demo_queues() -> list[str]:
    return [
        queue
        for participant in ORDER_SAGA.participants()
        for queue in consumed_queues(ORDER_SAGA, participant)
    ]


async def _require_no_consumers(probe: QueueProbe, url: str) -> None:
    busy = {q: n for q in _demo_queues() if (n := await probe.consumers(q) or 0)}
    if busy:
        raise QueuesInUse(
            f"refusing to start: {_consumers(busy)} on virtual host {vhost_of(url)!r} "
            "would take the demo's orders. Stop those services, or run `saga demo --no-start` "
            "to use them, or let the demo make a virtual host of its own (the broker's "
            "management plugin with an administrator user, or rabbitmqctl on this machine)."
        )


async def _require_own_consumers(probe: QueueProbe, url: str) -> None:
    # Each started service consumes once from each of its queues.
    extra = {q: n for q in _demo_queues() if (n := await probe.consumers(q) or 0) != 1}
    if extra:
        raise QueuesInUse(
            f"refusing to go on: {_consumers(extra)} on virtual host {vhost_of(url)!r} where "
            "only the demo's own services should be (one each): something else started meanwhile."
        )


def _consumers(counts: dict[str, int]) -> str:
    return ", ".join(f"{queue} has {n} consumer(s)" for queue, n in counts.items())


async def _require_consumers(url: str) -> None:
    probe = QueueProbe(url)
    try:
        idle = [queue for queue in _demo_queues() if not await probe.consumers(queue)]
    finally:
        await probe.close()
    if idle:
        raise ServiceStartError(
            f"--no-start, but nothing consumes from {', '.join(idle)}: start the services "
            "(faststream run <name>_service.main:create_app --factory) or drop --no-start"
        )


async def _publish(client: SagaClient, kinds: list[Scenario]) -> list[Envelope[Any]]:
    slots = asyncio.Semaphore(_PUBLISH_CONCURRENCY)
    # Order ids unique across runs, as services that were not started here may remember them.
    run = uuid.uuid4().hex[:6]

    async def publish(number: int, kind: Scenario) -> Envelope[Any]:
        async with slots:
            return await client.start(sample_order(kind, order_id=f"demo-{run}-{number:05d}"))

    return list(await asyncio.gather(*(publish(n, k) for n, k in enumerate(kinds, start=1))))


async def _wait(
    watch: EventWatch,
    started: list[Envelope[Any]],
    *,
    wait_seconds: float,
    status: Console,
    progress: bool,
) -> dict[uuid.UUID, list[Envelope[Any]]]:
    saga_ids = [envelope.context.saga_id for envelope in started]
    bar = Progress(
        TextColumn("sagas"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=status,
        disable=not progress,
    )
    with bar:
        task = bar.add_task("sagas", total=len(saga_ids))
        try:
            return await watch.wait_all(
                saga_ids, timeout=wait_seconds, on_end=lambda *_: bar.advance(task)
            )
        except WatchTimeout as exc:
            return exc.seen


def render(report: DemoReport, console: Console) -> None:
    """The table of sagas and the summary, for people."""
    table = Table(title=f"{len(report.sagas)} orders")
    for column in ("saga", "scenario", "outcome", "failed step"):
        table.add_column(column)
    for column in ("events", "duration"):
        table.add_column(column, justify="right")
    for saga in report.sagas:
        end = saga.end
        colour = {"fulfilled": "green", "cancelled": "yellow"}.get(end.outcome, "red")
        outcome = f"[{colour}]{end.outcome}[/]"
        if not saga.as_expected:
            outcome += " [red]≠ expected[/]"
        table.add_row(
            str(end.saga_id)[:8],
            saga.scenario.value,
            outcome,
            end.failed_step or "-",
            str(len(end.events)),
            f"{end.duration_ms:.0f} ms" if end.duration_ms is not None else "-",
        )
    console.print(table)
    summary = report.summary()
    outcomes = ", ".join(f"{name} {count}" for name, count in summary["outcomes"].items())
    steps = ", ".join(f"{name} {count}" for name, count in summary["failed_steps"].items())
    latency = summary["latency_ms"]
    pending = summary["pending"]
    console.print(
        f"[bold]{summary['orders']} orders[/]: {outcomes}; "
        + ("[green]none pending[/]" if not pending else f"[red]{pending} pending[/]")
    )
    console.print(f"failed steps: {steps}")
    console.print(
        f"wall time {summary['wall_time_s']:.2f}s, {summary['sagas_per_s']} sagas/s, "
        f"latency p50 {latency['p50']} ms, p95 {latency['p95']} ms"
    )
    if summary["unexpected"]:
        console.print(f"[red]{summary['unexpected']} saga(s) did not end as expected[/]")
    if report.log_dir is not None:
        console.print(f"service logs and databases: {report.log_dir}")


def demo_command(
    orders: Annotated[int, typer.Option("--orders", "-n", min=1, help="How many orders.")] = 40,
    start: Annotated[
        bool,
        typer.Option("--start/--no-start", help="Start the four services as processes."),
    ] = True,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated/--shared",
            help="Run the services on a virtual host of their own when one can be made "
            "(deleted after); --shared: on the URL's, if nothing else consumes there.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for every saga to end.", min=1)
    ] = 120.0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Run the order saga end to end: successes and every kind of business failure.

    Starts inventory, payment, shipping and notification as separate processes (databases
    and logs in a fresh temporary directory) on a virtual host of their own when the broker
    lets the demo make one (deleted after), publishes the orders, waits for every saga to
    end, prints a table and a summary, and stops the services. Exit code 0 when every saga
    ended as its scenario expects, 1 otherwise, 3 when no broker answers, 4 when the broker
    refuses the login or virtual host, 5 when other consumers are on the demo's queues.
    """
    console = Console()
    status = Console(stderr=True)
    try:
        report = asyncio.run(
            run_demo(
                orders=orders,
                url=url,
                start_services=start,
                isolated=isolated,
                wait_seconds=timeout,
                status=status,
                show_progress=not as_json,
            )
        )
    except BrokerUnavailable as exc:
        status.print(broker_unavailable_line(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(broker_exit_code(exc)) from None
    except QueuesInUse as exc:
        status.print(str(exc), style="red", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_IN_USE) from None
    except ServiceStartError as exc:
        status.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        render(report, console)
    raise typer.Exit(0 if report.ok else 1)
