"""Benchmark: the order saga's throughput and latency against the broker's own ceiling.

``uv run python bench/saga_bench.py`` runs, against the local RabbitMQ (a throwaway virtual
host per configuration, deleted after):

1. sagakit's four services as processes on SQLite, tracing off: N sagas at full speed
   (as fast as confirms allow, a bounded number in flight), then at a fixed offered rate
   (default: half the full-speed rate);
2. the null saga (``_null_saga.py``): the same topology, hops, persistent messages,
   confirms and acks on raw aio-pika with handlers that do nothing, at full speed and at
   the same offered rate: the ceiling;
3. the services with tracing on (OTLP/HTTP to a local sink that answers 200), and on
   PostgreSQL (fresh databases, dropped after), at full speed on fewer sagas.

It prints a Markdown table and writes ``bench/results/latest.json`` and ``latest.md``,
and copies the table to ``bench/RESULTS.md``.

``--peers`` runs instead sagakit (SQLite, PostgreSQL), the null saga and the same saga on
DBOS Transact and Temporal (``bench/peers/``; ``uv run --group peers ...``), and writes
``bench/results/peers.json``, ``peers.md`` and ``bench/PEERS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from _infra import (
    broker_pid,
    postgres_version,
    rabbitmq_version,
    throwaway_databases,
    throwaway_vhost,
)
from _load import Observer, PhaseResult, full_speed, offered_rate
from _null_saga import EXCHANGE as NULL_EXCHANGE
from _null_saga import HOPS, TERMINAL, declare, queue_name
from _procstat import (
    cpu_model,
    cpu_seconds,
    die_with_parent,
    load_average,
    peak_rss_mib,
    postgres_pid,
    process_tree,
)
from _profile import Profiler
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from sagakit import Envelope, ParticipantSettings
from sagakit.client import SagaClient
from sagakit.testing import QueueProbe, ServiceProcesses

BENCH_DIR = Path(__file__).resolve().parent
PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
DEFAULT_MIX = {Scenario.FULFILLED: 80.0} | {
    scenario: 4.0 for scenario in Scenario if scenario is not Scenario.FULFILLED
}
# Enough stock that no fulfilled order of the run fails for want of it.
BENCH_STOCK = {"SKU-APPLE": 10**9, "SKU-PEAR": 10**9, "SKU-PLUM": 10**9, "SKU-RARE": 0}
PREFETCH = int(ParticipantSettings.model_fields["prefetch"].default)
PHASE_TIMEOUT = 600.0

Sagas = list[tuple[Envelope[Any], str]]


@dataclass
class Outcome:
    """One configuration's phases and what its processes used."""

    name: str
    system: str
    store: str | None
    tracing: bool
    phases: list[PhaseResult] = field(default_factory=list)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.phase == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "system": self.system,
            "store": self.store,
            "tracing": self.tracing,
            "phases": [p.as_dict() for p in self.phases],
            "peak_rss_mib": self.peak_rss_mib,
            "notes": self.notes,
            "profile": self.profile,
        }


# -- arguments -----------------------------------------------------------------------------


def parse_mix(text: str) -> dict[Scenario, float]:
    """``fulfilled=80,card_declined=5,...``: relative weights of the outcomes."""
    mix: dict[Scenario, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition("=")
        try:
            mix[Scenario(name.strip())] = float(weight)
        except ValueError:
            known = ", ".join(s.value for s in Scenario)
            raise argparse.ArgumentTypeError(f"bad mix item {item!r}; scenarios: {known}") from None
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("the mix needs a positive weight")
    return mix


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=2000, help="sagas in the main phases")
    parser.add_argument(
        "--compare-sagas",
        type=int,
        default=1000,
        help="sagas per tracing-on and PostgreSQL run (fewer, to stay under five minutes)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured sagas first")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=DEFAULT_MIX,
        help="outcome weights, e.g. fulfilled=80,card_declined=4 (scenarios of "
        "order_contracts.samples.Scenario); default: 80%% fulfilled, 4%% each failure",
    )
    parser.add_argument("--in-flight", type=int, default=256, help="full speed: sagas in flight")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=PREFETCH,
        help="consumer prefetch of the services (<P>_PREFETCH) and of the null saga's hops "
        f"(default: the services' default, {PREFETCH})",
    )
    parser.add_argument("--rate", type=float, help="offered rate (default: half of full speed)")
    parser.add_argument(
        "--rate-seconds", type=float, default=10.0, help="how long the offered-rate phase lasts"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--url", default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every service process (repeatable), e.g. "
        "PYTHONPATH=/elsewhere/shared to measure another sagakit",
    )
    parser.add_argument("--skip-tracing", action="store_true")
    parser.add_argument(
        "--skip-faststream-null",
        action="store_true",
        help="skip the null saga on FastStream (the ceiling of a FastStream app)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every service with py-spy during the main full-speed phase "
        "(slows it down: its figures are then not the benchmark's)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="instead: sagakit (SQLite, PostgreSQL), the null saga, DBOS and Temporal, "
        "--compare-sagas fulfilled sagas each, in one table (needs `--group peers`)",
    )
    parser.add_argument(
        "--peers-systems",
        metavar="KEYS",
        help=f"--peers: only these systems, comma-separated, of {','.join(PEER_KEYS)}",
    )
    parser.add_argument(
        "--dbos-polling",
        type=float,
        default=0.05,
        help="--peers: the DBOS queue's polling_interval_sec (DBOS's default is 1 s)",
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--results-md",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="where the committed copy of the table goes ('-' for nowhere; with --peers "
        "the default is bench/PEERS.md)",
    )
    return parser.parse_args(argv)


# -- sagas -----------------------------------------------------------------------------------


def expected_terminal(scenario: Scenario) -> str:
    if EXPECTED_FAILED_STEP[scenario] is None:
        return ORDER_SAGA.completed_event
    return ORDER_SAGA.cancelled_event


class SagaSource:
    """Start events in the configured outcome mix, the same sequence for every system."""

    def __init__(self, mix: Mapping[Scenario, float], seed: int) -> None:
        self.mix = dict(mix)
        self.seed = seed

    def scenarios(self, count: int, salt: str) -> list[Scenario]:
        rng = random.Random(f"{self.seed}-{salt}")
        return rng.choices(list(self.mix), weights=list(self.mix.values()), k=count)

    def sagas(self, client: SagaClient, count: int, salt: str, *, null: bool = False) -> Sagas:
        return [
            (
                client.new_saga(sample_order(scenario)),
                TERMINAL if null else expected_terminal(scenario),
            )
            for scenario in self.scenarios(count, salt)
        ]


# -- measuring -------------------------------------------------------------------------------


class Meter:
    """CPU time of named process groups across a phase.

    A group is a list of pids, or a function that lists them at each snapshot (PostgreSQL's
    backends come and go); a process that started during the phase counts from zero.
    """

    def __init__(self, groups: Mapping[str, list[int] | Callable[[], list[int]]]) -> None:
        self.groups = dict(groups)

    def snapshot(self) -> dict[str, dict[int, float]]:
        found = {}
        for name, group in self.groups.items():
            pids = group() if callable(group) else group
            found[name] = {pid: cpu_seconds([pid]) for pid in pids}
        return found

    async def measure(self, run: Awaitable[PhaseResult]) -> PhaseResult:
        before = self.snapshot()
        result = await run
        after = self.snapshot()
        result.cpu_seconds = {
            name: round(
                sum(seconds - before[name].get(pid, 0.0) for pid, seconds in after[name].items()),
                2,
            )
            for name in after
        }
        return result


def common_groups(*, postgres: bool = False) -> dict[str, list[int] | Callable[[], list[int]]]:
    groups: dict[str, list[int] | Callable[[], list[int]]] = {"driver": [os.getpid()]}
    broker = broker_pid()
    if broker is not None:
        groups["rabbitmq"] = [broker]
    server = postgres_pid() if postgres else None
    if server is not None:
        groups["postgresql"] = functools.partial(process_tree, server)
    return groups


@contextlib.asynccontextmanager
async def observed(url: str, exchange: str) -> AsyncIterator[Observer]:
    observer = Observer(ORDER_SAGA.terminal_events() | {TERMINAL})
    await observer.attach(url, exchange)
    try:
        yield observer
    finally:
        await observer.close()


def rate_phase_size(rate: float, args: argparse.Namespace) -> int:
    sagas: int = args.sagas
    return max(100, min(sagas, int(rate * args.rate_seconds)))


# -- sagakit's services ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services_up(
    name: str,
    *,
    url: str,
    databases: Mapping[str, str],
    env: Mapping[str, str],
    args: argparse.Namespace,
) -> AsyncIterator[tuple[SagaClient, Observer, dict[str, list[int]]]]:
    """The four services as processes, a client and an observer; each service's process tree."""
    log_dir = args.output_dir / "logs" / name
    shutil.rmtree(log_dir, ignore_errors=True)
    procs = ServiceProcesses(
        {p: (p, f"{p}_service.main:create_app") for p in PARTICIPANTS},
        spec=ORDER_SAGA,
        url=url,
        log_dir=log_dir,
        env={
            "INVENTORY_STOCK": json.dumps(BENCH_STOCK),
            **dict(item.split("=", 1) for item in args.service_env),
            **env,
        },
        service_env={
            p: {
                f"{p.upper()}_DATABASE_URL": databases[p],
                f"{p.upper()}_PREFETCH": str(args.prefetch),
            }
            for p in PARTICIPANTS
        },
        grace=15.0,
    )
    async with procs, SagaClient(url, ORDER_SAGA, producer="saga-bench") as client:
        await procs.start(timeout=120)
        trees = {p: process_tree(_pid(procs, p)) for p in PARTICIPANTS}
        async with observed(url, ORDER_SAGA.exchange) as observer:
            yield client, observer, trees


async def run_services(
    outcome: Outcome,
    *,
    url: str,
    databases: Mapping[str, str],
    env: Mapping[str, str],
    source: SagaSource,
    args: argparse.Namespace,
    sagas: int,
    rate: Callable[[PhaseResult], float] | None = None,
    profile: bool = False,
) -> None:
    """Start the four services, warm them up, run the phases, record what they used."""
    async with services_up(outcome.name, url=url, databases=databases, env=env, args=args) as (
        client,
        observer,
        trees,
    ):
        meter = Meter({**trees, **common_groups(postgres=outcome.store == "postgresql")})
        await full_speed(
            client,
            observer,
            source.sagas(client, args.warmup, "warmup"),
            in_flight=args.in_flight,
            timeout=PHASE_TIMEOUT,
        )
        profiler = Profiler(args.output_dir / "profile" / outcome.name) if profile else None
        if profiler is not None:
            for participant, pids in trees.items():
                profiler.start(participant, pids[0])
        try:
            full = await meter.measure(
                full_speed(
                    client,
                    observer,
                    source.sagas(client, sagas, "full"),
                    in_flight=args.in_flight,
                    timeout=PHASE_TIMEOUT,
                )
            )
        finally:
            if profiler is not None:
                outcome.profile = profiler.stop()
        outcome.phases.append(full)
        _progress(outcome, full)
        if rate is not None:
            offered = rate(full)
            count = rate_phase_size(offered, args)
            at_rate = await meter.measure(
                offered_rate(
                    client,
                    observer,
                    source.sagas(client, count, "rate"),
                    rate=offered,
                    timeout=PHASE_TIMEOUT,
                )
            )
            outcome.phases.append(at_rate)
            _progress(outcome, at_rate)
        outcome.peak_rss_mib = {p: round(peak_rss_mib(trees[p]), 1) for p in PARTICIPANTS}


def _pid(procs: ServiceProcesses, name: str) -> int:
    pid = procs.pid(name)
    if pid is None:
        raise RuntimeError(f"{name} is not running")
    return pid


# -- the null saga ---------------------------------------------------------------------------


@contextlib.contextmanager
def null_hops(
    url: str, log_dir: Path, *, prefetch: int, faststream: bool = False
) -> Iterator[list[subprocess.Popen[bytes]]]:
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for hop in range(1, HOPS + 1):
            with (log_dir / f"null-hop{hop}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(BENCH_DIR / "_null_saga.py"),
                            url,
                            str(hop),
                            "--prefetch",
                            str(prefetch),
                            *(["--faststream"] if faststream else []),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=die_with_parent,
                    )
                )
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_consuming(url: str, queues: list[str], processes: list[Any]) -> None:
    probe = QueueProbe(url)
    try:
        give_up_at = time.monotonic() + 60
        while True:
            counts = await probe.counts(tuple(queues))
            if all(counts[q] >= 1 for q in queues):
                return
            if any(p.poll() is not None for p in processes) or time.monotonic() > give_up_at:
                raise RuntimeError("the null saga's hops did not start consuming")
            await asyncio.sleep(0.1)
    finally:
        await probe.close()


@contextlib.asynccontextmanager
async def null_up(
    name: str, *, url: str, args: argparse.Namespace, faststream: bool = False
) -> AsyncIterator[tuple[SagaClient, Observer, dict[str, list[int]]]]:
    """The null saga's hops as processes, a client and an observer; each hop's process tree."""
    connection = await aio_pika.connect_robust(url)
    async with connection:
        await declare(await connection.channel())
    queues = [queue_name(hop) for hop in range(1, HOPS + 1)]
    log_dir = args.output_dir / "logs" / name
    with null_hops(url, log_dir, prefetch=args.prefetch, faststream=faststream) as processes:
        await wait_consuming(url, queues, processes)
        trees = {f"hop{i + 1}": process_tree(p.pid) for i, p in enumerate(processes)}
        async with (
            SagaClient(url, ORDER_SAGA, producer="saga-bench") as client,
            observed(url, NULL_EXCHANGE) as observer,
        ):
            yield client, observer, trees


async def run_null(
    outcome: Outcome,
    *,
    url: str,
    source: SagaSource,
    args: argparse.Namespace,
    rate: float | None,
    sagas: int,
    faststream: bool = False,
) -> None:
    """The null saga's hops as processes: full speed, then (given a rate) the offered rate."""
    async with null_up(outcome.name, url=url, args=args, faststream=faststream) as (
        client,
        observer,
        trees,
    ):
        meter = Meter({**trees, **common_groups()})
        await full_speed(
            client,
            observer,
            source.sagas(client, args.warmup, "warmup", null=True),
            in_flight=args.in_flight,
            timeout=PHASE_TIMEOUT,
        )
        full = await meter.measure(
            full_speed(
                client,
                observer,
                source.sagas(client, sagas, "full", null=True),
                in_flight=args.in_flight,
                timeout=PHASE_TIMEOUT,
            )
        )
        outcome.phases.append(full)
        _progress(outcome, full)
        if rate is not None:
            at_rate = await meter.measure(
                offered_rate(
                    client,
                    observer,
                    source.sagas(client, rate_phase_size(rate, args), "rate", null=True),
                    rate=rate,
                    timeout=PHASE_TIMEOUT,
                )
            )
            outcome.phases.append(at_rate)
            _progress(outcome, at_rate)
        outcome.peak_rss_mib = {name: round(peak_rss_mib(pids), 1) for name, pids in trees.items()}


# -- tracing sink ----------------------------------------------------------------------------


@contextlib.contextmanager
def otlp_sink() -> Iterator[tuple[str, dict[str, int]]]:
    """A local OTLP/HTTP endpoint that answers 200; the dict fills with its counts at exit."""
    process = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_otlp_sink.py")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    port = int(str(process.stdout.readline()))
    received: dict[str, int] = {}
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
        with contextlib.suppress(ValueError):
            received.update(json.loads(out.strip().splitlines()[-1]))


# -- report ----------------------------------------------------------------------------------


def _progress(outcome: Outcome, phase: PhaseResult) -> None:
    latency = phase.latency_ms
    print(
        f"  {outcome.name:<22} {phase.phase:<13} {phase.sagas:>5} sagas "
        f"{phase.sagas_per_second:>7.1f}/s  {phase.events_per_second:>7.1f} ev/s  "
        f"p50 {latency['p50']:.0f} p95 {latency['p95']:.0f} p99 {latency['p99']:.0f} ms",
        flush=True,
    )


def _cell(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _fulfilled_p99(phase: PhaseResult) -> float | None:
    return phase.latency_by_outcome_ms.get(TERMINAL, {}).get("p99")


def markdown(report: Mapping[str, Any], outcomes: list[Outcome]) -> str:
    by_name = {o.name: o for o in outcomes}
    null = by_name.get("null-saga")
    null_full = null.phase("full speed") if null else None
    null_rate = null.phase("offered rate") if null else None
    lines = [
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"RabbitMQ {report['machine']['rabbitmq']}, Python {report['machine']['python']}"
        + (
            f", PostgreSQL {report['machine']['postgresql']}"
            if report["machine"].get("postgresql")
            else ""
        )
        + f". Run {report['started_at']}, {report['seconds']:.0f} s in all. Load average "
        f"{report['machine']['load_average_at_start'][0]:.1f} at the start and "
        f"{report['machine']['load_average_at_end'][0]:.1f} at the end: the machine is "
        "shared, so every figure moves with what else runs.",
        "",
        "| configuration | phase | sagas | sagas/s | events/s | % of null saga | "
        "p50 ms | p95 ms | p99 ms | p99 / null p99 | p99 fulfilled ms | "
        "p99 fulfilled / null p99 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for outcome in outcomes:
        for phase in outcome.phases:
            reference = null_full if phase.phase == "full speed" else null_rate
            share = ratio = fulfilled_ratio = None
            fulfilled = _fulfilled_p99(phase)
            if outcome is not null and reference is not None:
                if phase.phase == "full speed":
                    share = 100 * phase.sagas_per_second / reference.sagas_per_second
                elif abs((phase.offered_rate or 0) - (reference.offered_rate or -1)) < 1:
                    ratio = phase.latency_ms["p99"] / reference.latency_ms["p99"]
                    if fulfilled is not None:
                        fulfilled_ratio = fulfilled / reference.latency_ms["p99"]
            label = phase.phase
            if phase.offered_rate is not None:
                label = f"offered {phase.offered_rate:.0f}/s"
            lines.append(
                f"| {outcome.name} | {label} | {phase.sagas} | {phase.sagas_per_second:.0f} | "
                f"{phase.events_per_second:.0f} | {_cell(share, '{:.0f}%')} | "
                f"{phase.latency_ms['p50']:.0f} | {phase.latency_ms['p95']:.0f} | "
                f"{phase.latency_ms['p99']:.0f} | {_cell(ratio, '{:.2f}x')} | "
                f"{_cell(fulfilled)} | {_cell(fulfilled_ratio, '{:.2f}x')} |"
            )
    lines += [
        "",
        "CPU seconds per 1000 sagas at full speed (each process; the broker and the "
        "benchmark's driver share the same two cores) and peak RSS:",
        "",
        "| configuration | process | CPU s / 1000 sagas | peak RSS MiB |",
        "|---|---|--:|--:|",
    ]
    for outcome in outcomes:
        full = outcome.phase("full speed")
        if full is None:
            continue
        for name, seconds in full.cpu_seconds.items():
            rss = outcome.peak_rss_mib.get(name)
            lines.append(
                f"| {outcome.name} | {name} | {1000 * seconds / full.sagas:.2f} | "
                f"{_cell(rss, '{:.0f}')} |"
            )
    notes = [note for outcome in outcomes for note in outcome.notes]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    targets = report.get("targets")
    if targets:
        lines += ["", "Targets: " + "; ".join(targets)]
    return "\n".join(lines) + "\n"


def targets(outcomes: list[Outcome]) -> list[str]:
    by_name = {o.name: o for o in outcomes}
    null = by_name.get("null-saga")
    if null is None:
        return []
    null_full, null_rate = null.phase("full speed"), null.phase("offered rate")
    found = []
    for name, goal in (("sqlite", 70.0), ("sqlite+tracing", 60.0)):
        outcome = by_name.get(name)
        full = outcome.phase("full speed") if outcome else None
        if full is not None and null_full is not None:
            share = 100 * full.sagas_per_second / null_full.sagas_per_second
            verdict = "met" if share >= goal else "not met"
            found.append(
                f"{name} at full speed: {share:.0f}% of the null saga (goal {goal:.0f}%: {verdict})"
            )
    ceiling = by_name.get("null-faststream")
    ceiling_full = ceiling.phase("full speed") if ceiling else None
    if ceiling_full is not None and null_full is not None:
        share = 100 * ceiling_full.sagas_per_second / null_full.sagas_per_second
        found.append(
            f"for scale, the null saga on FastStream (no work at all) reaches {share:.0f}%"
        )
    main = by_name.get("sqlite")
    at_rate = main.phase("offered rate") if main else None
    if at_rate is not None and null_rate is not None:
        ratio = at_rate.latency_ms["p99"] / null_rate.latency_ms["p99"]
        verdict = "met" if ratio <= 2 else "not met"
        found.append(
            f"p99 at {at_rate.offered_rate:.0f}/s offered: {ratio:.2f}x the null saga's "
            f"(goal 2x: {verdict})"
        )
        fulfilled = _fulfilled_p99(at_rate)
        if fulfilled is not None:
            ratio = fulfilled / null_rate.latency_ms["p99"]
            verdict = "met" if ratio <= 2 else "not met"
            found.append(
                f"counting fulfilled sagas only (four hops, as the null saga): {ratio:.2f}x "
                f"(goal 2x: {verdict})"
            )
    return found


# -- the peers (--peers) ---------------------------------------------------------------------

FULFILLED_ONLY = {Scenario.FULFILLED: 1.0}
PEER_KEYS = (
    "null",
    "sqlite",
    "postgresql",
    "dbos-queue",
    "dbos-start",
    "temporal-tuned",
    "temporal-shipped",
)
# The offered-rate phase of --peers: at least this many sagas (nearest-rank p99 of 60 is
# the highest: at the slowest system's half rate, 100 took 80 s per system under load).
PEERS_RATE_MIN_SAGAS = 60
# Warm-up before the full-speed phase: pools, caches and the peers' workflow caches filled;
# its rate sizes the full-speed phase.
PEERS_WARMUP = 50
# The full-speed phase: --compare-sagas, or fewer for a slow system: about this many
# seconds at its warm-up rate, and never fewer than PEERS_FULL_MIN_SAGAS.
PEERS_FULL_SECONDS = 30.0
PEERS_FULL_MIN_SAGAS = 200


class _OnBroker:
    """Sagakit's services or the null saga, up: ``peers._systems.Running`` over ``_load``."""

    def __init__(
        self,
        client: SagaClient,
        observer: Observer,
        groups: dict[str, list[int] | Callable[[], list[int]]],
        *,
        null: bool,
    ) -> None:
        from peers._systems import Facts

        self.client = client
        self.observer = observer
        self._groups = groups
        self.null = null
        self.facts = Facts()

    def groups(self) -> dict[str, list[int] | Callable[[], list[int]]]:
        return self._groups

    def _sagas(self, count: int, salt: str) -> Sagas:
        return SagaSource(FULFILLED_ONLY, 0).sagas(self.client, count, salt, null=self.null)

    async def check(self) -> dict[str, int]:
        scenarios = [Scenario.FULFILLED] * 2 if self.null else [s for s in Scenario for _ in "ab"]
        sagas = [
            (self.client.new_saga(sample_order(s)), TERMINAL if self.null else expected_terminal(s))
            for s in scenarios
        ]
        result = await full_speed(
            self.client, self.observer, sagas, in_flight=len(sagas), timeout=PHASE_TIMEOUT
        )
        self.facts.sagas += len(sagas)
        if result.unexpected_outcomes:
            raise RuntimeError(f"{result.unexpected_outcomes} saga(s) ended otherwise: {result}")
        return result.outcomes

    async def full_speed(self, count: int, *, in_flight: int, phase: str) -> PhaseResult:
        self.facts.sagas += count
        return await full_speed(
            self.client,
            self.observer,
            self._sagas(count, phase),
            in_flight=in_flight,
            timeout=PHASE_TIMEOUT,
            phase=phase,
        )

    async def at_rate(self, count: int, *, rate: float) -> PhaseResult:
        self.facts.sagas += count
        return await offered_rate(
            self.client, self.observer, self._sagas(count, "rate"), rate=rate, timeout=PHASE_TIMEOUT
        )


class SagakitSystem:
    """sagakit's four services on SQLite or PostgreSQL, tracing off."""

    def __init__(self, store: str, args: argparse.Namespace) -> None:
        from peers._systems import Fairness

        self.store = store
        self.args = args
        self.name = f"sagakit, {'SQLite' if store == 'sqlite' else 'PostgreSQL'}"
        self.fairness = Fairness(
            durability=(
                "SQLite per service, WAL, `synchronous=NORMAL`"
                if store == "sqlite"
                else "PostgreSQL as configured, a database per service"
            )
            + "; RabbitMQ quorum queues, persistent messages, publisher confirms",
            per_saga="four services, each consuming one event and publishing the next (the "
            "start event and four more: five persistent messages, each confirmed, each "
            "delivery acked after); per delivery one local transaction (inbox record, step "
            "claim, the step's rows, status, outbox row), the sent marks batched in the "
            "background",
        )

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[_OnBroker]:
        from peers._systems import Facts, counted_databases, database_name, postgres_processes

        facts = Facts()
        label = f"peers-{self.store}"
        with throwaway_vhost(self.args.url, label) as url:
            async with contextlib.AsyncExitStack() as stack:
                if self.store == "sqlite":
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="saga-bench-"))
                    databases = {p: f"sqlite+aiosqlite:///{tmp}/{p}.db" for p in PARTICIPANTS}
                else:
                    databases = await stack.enter_async_context(
                        counted_databases(self.args.postgres_url, PARTICIPANTS, facts)
                    )
                client, observer, trees = await stack.enter_async_context(
                    services_up(label, url=url, databases=databases, env={}, args=self.args)
                )
                groups = {**trees, **common_groups()}
                if self.store == "postgresql":
                    names = [database_name(url) for url in databases.values()]
                    groups["postgresql"] = postgres_processes(names)
                running = _OnBroker(client, observer, groups, null=False)
                running.facts = facts
                yield running


class NullSystem:
    """The null saga on raw aio-pika: the broker's ceiling."""

    def __init__(self, args: argparse.Namespace) -> None:
        from peers._systems import Fairness

        self.args = args
        self.name = "raw aio-pika null saga (bench's own)"
        self.fairness = Fairness(
            durability="RabbitMQ quorum queues, persistent messages, publisher confirms; no "
            "database",
            per_saga="four hop processes, each consuming one message and publishing the next: "
            "five persistent messages, each confirmed, each delivery acked after; no work",
        )

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[_OnBroker]:
        with throwaway_vhost(self.args.url, "peers-null") as url:
            async with null_up("peers-null", url=url, args=self.args) as (client, observer, trees):
                yield _OnBroker(client, observer, {**trees, **common_groups()}, null=True)


async def _postgres_settings(admin_url: str) -> dict[str, str]:
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        names = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
        return {name: str(await connection.fetchval(f"SHOW {name}")) for name in names}
    finally:
        await connection.close()


def peer_systems(args: argparse.Namespace) -> list[Any]:
    """Every system of ``--peers``, in the order they run (``--peers-systems`` picks some)."""
    from peers import dbos_peer, temporal_peer

    log_dir = args.output_dir / "logs" / "peers"
    dbos_queue, dbos_start = dbos_peer.systems(
        admin_url=args.postgres_url, log_dir=log_dir, polling=args.dbos_polling
    )
    tuned, shipped = temporal_peer.systems(log_dir=log_dir)
    every = {
        "null": NullSystem(args),
        "sqlite": SagakitSystem("sqlite", args),
        "postgresql": SagakitSystem("postgresql", args),
        "dbos-queue": dbos_queue,
        "dbos-start": dbos_start,
        "temporal-tuned": tuned,
        "temporal-shipped": shipped,
    }
    chosen = args.peers_systems.split(",") if args.peers_systems else list(PEER_KEYS)
    unknown = set(chosen) - set(every)
    if unknown:
        raise SystemExit(f"unknown --peers-systems {sorted(unknown)}; known: {list(every)}")
    return [every[key] for key in chosen]


def _peer_progress(name: str, phase: PhaseResult) -> None:
    latency = phase.latency_ms
    cpu = 1000 * sum(phase.cpu_seconds.values()) / phase.sagas
    print(
        f"  {name[:48]:<48} {phase.phase:<12} {phase.sagas:>5} sagas "
        f"{phase.sagas_per_second:>6.1f}/s  {cpu:6.1f} ms CPU/saga  "
        f"p50 {latency['p50']:.0f} p99 {latency['p99']:.0f} ms",
        flush=True,
    )


def full_speed_sagas(warm_up: PhaseResult, most: int) -> int:
    """How many sagas the full-speed phase of a system with this warm-up times."""
    return min(most, max(PEERS_FULL_MIN_SAGAS, int(warm_up.sagas_per_second * PEERS_FULL_SECONDS)))


async def bench_peers(args: argparse.Namespace) -> dict[str, Any]:
    """sagakit (SQLite, PostgreSQL), the null saga and the peers: one table.

    One pass, each system alone on the machine, the slowest first: its check, a warm-up,
    its full-speed phase, then its offered-rate phase at one rate for all (half the first
    system's full-speed rate unless ``--rate``: the slowest one's, which runs first).
    """
    from peers._report import Measured, markdown

    began = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = load_average()
    systems = peer_systems(args)
    measured = [Measured(system.name, system.fairness) for system in systems]
    settings = await _postgres_settings(args.postgres_url)
    rate: float | None = args.rate
    basis = "--rate"
    slower: list[str] = []
    print(f"load average {load_at_start[0]:.1f}; the slowest first", flush=True)
    # Systems start, check and time one at a time, slowest first (peer_systems' order
    # reversed): the first one's full-speed rate sets the offered rate of every system.
    for system, row in reversed(list(zip(systems, measured, strict=True))):
        print(f"{system.name}", flush=True)
        async with system.up() as running:
            row.checked = await running.check()
            warm_up = await running.full_speed(
                PEERS_WARMUP, in_flight=args.in_flight, phase="warm-up"
            )
            count = full_speed_sagas(warm_up, args.compare_sagas)
            row.full = await Meter(running.groups()).measure(
                running.full_speed(count, in_flight=args.in_flight, phase="full speed")
            )
            _peer_progress(system.name, row.full)
            if isinstance(running, _OnBroker):
                row.messages_per_saga = row.full.events / row.full.sagas
            if rate is None:
                rate = round(row.full.sagas_per_second / 2, 1)
                basis = f"half the first and slowest system's full-speed rate, {system.name}'s"
            elif args.rate is None and row.full.sagas_per_second < 2 * rate:
                slower.append(f"{system.name} ({row.full.sagas_per_second:.0f}/s)")
            at_count = max(PEERS_RATE_MIN_SAGAS, int(rate * args.rate_seconds))
            row.at_rate = await Meter(running.groups()).measure(
                running.at_rate(at_count, rate=rate)
            )
            _peer_progress(system.name, row.at_rate)
        row.facts = running.facts
    assert rate is not None
    if slower:
        basis += "; slower at full speed than twice that rate: " + ", ".join(slower)
    seconds = time.monotonic() - began
    load_at_end = load_average()
    header = (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; RabbitMQ {rabbitmq_version()}, "
        f"PostgreSQL {await postgres_version(args.postgres_url)}, Python "
        f"{platform.python_version()}. Run {started_at}, {seconds:.0f} s in all. Load average "
        f"{load_at_start[0]:.1f} at the start and {load_at_end[0]:.1f} at the end: the machine "
        "is shared, so every figure moves with what else runs."
    )
    table = markdown(
        header=header,
        measured=measured,
        rate=rate,
        rate_basis=basis,
        postgres_settings=settings,
        sagas=args.compare_sagas,
        in_flight=args.in_flight,
    )
    return {
        "started_at": started_at,
        "seconds": round(seconds, 1),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_at_end,
        "rate": rate,
        "rate_basis": basis,
        "postgres_settings": settings,
        "systems": [row.as_dict() for row in measured],
        "table": table,
    }


def write_peers(report: Mapping[str, Any], args: argparse.Namespace) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "peers.md").write_text(report["table"])
    target = args.results_md
    if str(target) != "-":
        if target == BENCH_DIR / "RESULTS.md":
            target = BENCH_DIR / "PEERS.md"
        target.write_text(
            "# Against the peers\n\n"
            "The latest table written by `uv run --group peers python bench/saga_bench.py "
            "--peers` (bench/README.md says what each figure means).\n\n" + report["table"]
        )


# -- main ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    source = SagaSource(args.mix, args.seed)
    outcomes: list[Outcome] = []
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "rabbitmq": rabbitmq_version(),
            "python": platform.python_version(),
            "load_average_at_start": load_average(),
        },
        "settings": {
            "sagas": args.sagas,
            "compare_sagas": args.compare_sagas,
            "warmup": args.warmup,
            "in_flight": args.in_flight,
            "prefetch": args.prefetch,
            "mix": {s.value: w for s, w in args.mix.items()},
            "rate_seconds": args.rate_seconds,
            "service_env": args.service_env,
        },
    }
    offered: dict[str, float] = {}

    def half_of_full(full: PhaseResult) -> float:
        offered["rate"] = args.rate or round(full.sagas_per_second / 2, 1)
        return offered["rate"]

    with tempfile.TemporaryDirectory(prefix="saga-bench-") as tmp:
        sqlite = {p: f"sqlite+aiosqlite:///{tmp}/{{run}}/{p}.db" for p in PARTICIPANTS}

        def sqlite_for(run: str) -> dict[str, str]:
            return {p: url.replace("{run}", run) for p, url in sqlite.items()}

        print("sagakit services, SQLite, tracing off", flush=True)
        main = Outcome("sqlite", "sagakit", "sqlite", tracing=False)
        outcomes.append(main)
        with throwaway_vhost(args.url, "sqlite") as url:
            await run_services(
                main,
                url=url,
                databases=sqlite_for("sqlite"),
                env={},
                source=source,
                args=args,
                sagas=args.sagas,
                rate=half_of_full,
                profile=args.profile,
            )

        print("null saga (raw aio-pika, same topology, persistence, confirms and acks)", flush=True)
        null = Outcome("null-saga", "null", None, tracing=False)
        outcomes.insert(0, null)
        with throwaway_vhost(args.url, "null") as url:
            await run_null(
                null, url=url, source=source, args=args, rate=offered["rate"], sagas=args.sagas
            )

        if not args.skip_faststream_null:
            print("null saga on FastStream (the ceiling of a FastStream app)", flush=True)
            on_faststream = Outcome("null-faststream", "null", None, tracing=False)
            outcomes.insert(1, on_faststream)
            with throwaway_vhost(args.url, "null-faststream") as url:
                await run_null(
                    on_faststream,
                    url=url,
                    source=source,
                    args=args,
                    rate=None,
                    sagas=args.compare_sagas,
                    faststream=True,
                )

        if not args.skip_tracing:
            print("sagakit services, SQLite, tracing on (OTLP/HTTP to a local sink)", flush=True)
            traced = Outcome("sqlite+tracing", "sagakit", "sqlite", tracing=True)
            outcomes.append(traced)
            with (
                throwaway_vhost(args.url, "tracing") as url,
                otlp_sink() as (endpoint, received),
            ):
                await run_services(
                    traced,
                    url=url,
                    databases=sqlite_for("tracing"),
                    env={
                        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    },
                    source=source,
                    args=args,
                    sagas=args.compare_sagas,
                )
            traced.notes.append(
                f"sqlite+tracing: the OTLP sink received {received.get('requests', 0)} "
                f"export requests, {received.get('bytes', 0) / 1e6:.1f} MB"
            )

        if not args.skip_postgres:
            print("sagakit services, PostgreSQL, tracing off", flush=True)
            postgres = Outcome("postgresql", "sagakit", "postgresql", tracing=False)
            outcomes.append(postgres)
            report["machine"]["postgresql"] = await postgres_version(args.postgres_url)
            with throwaway_vhost(args.url, "postgres") as url:
                async with throwaway_databases(args.postgres_url, PARTICIPANTS) as databases:
                    await run_services(
                        postgres,
                        url=url,
                        databases=databases,
                        env={},
                        source=source,
                        args=args,
                        sagas=args.compare_sagas,
                    )

    if args.compare_sagas != args.sagas:
        outcomes[-1].notes.append(
            f"The tracing and PostgreSQL runs use {args.compare_sagas} sagas, the main runs "
            f"{args.sagas}, to keep the whole benchmark under five minutes."
        )
    if args.profile:
        outcomes[1].notes.append(
            "Profiled with py-spy during the main full-speed phase: those figures are slowed "
            "by the sampling and are not the benchmark's."
        )
    report["seconds"] = round(time.monotonic() - began, 1)
    report["machine"]["load_average_at_end"] = load_average()
    report["targets"] = targets(outcomes)
    report["configurations"] = [o.as_dict() for o in outcomes]
    report["table"] = markdown(report, outcomes)
    return report


def write(report: Mapping[str, Any], args: argparse.Namespace) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "latest.md").write_text(report["table"])
    if str(args.results_md) != "-":
        args.results_md.write_text(
            "# Benchmark results\n\n"
            "The latest table written by `uv run python bench/saga_bench.py` "
            "(bench/README.md says what each figure means).\n\n" + report["table"]
        )


async def _until_terminated(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM (a timeout, a CI cancel) cancels the run, so that virtual hosts, databases
    # and processes are cleaned up as on Ctrl-C.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.peers:
        return await bench_peers(args)
    return await bench(args)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    report = asyncio.run(_until_terminated(args))
    if args.peers:
        write_peers(report, args)
        print()
        print(report["table"])
        return
    write(report, args)
    print()
    print(report["table"])
    for outcome in report["configurations"]:
        for service, summary in outcome["profile"].items():
            print(f"profile of {service} ({summary['samples']} samples), by part:")
            for name, share in summary["parts"].items():
                print(f"  {share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
