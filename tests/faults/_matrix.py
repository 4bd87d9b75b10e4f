"""The fault matrix's machinery: an order system per case, the harm it meets, and the audit.

Each case gets a system of its own: a virtual host on the real broker, the four participants
as processes, each store placed where the case's fault can reach it (a private PostgreSQL
cluster, a small volume, or a plain SQLite file), an independent ledger (a queue bound ``#``
to the flow's exchange, declared before the first saga) and a client. After the harm, the
case waits until every saga has ended and the system is at rest, then audits the wire
(the ledger), every store and the dead-letter queues with the chaos run's audit
(``sagakit_chaos.audit``): every saga ended as the rules say, none stranded, none cancelled
for a fault, nothing lost or applied twice, parked messages only where expected, with their
reason. A case adds what it saw while the fault lasted (``evidence``), so that a fault that
never met a saga cannot pass for one that was survived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGCONT, SIGSTOP
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from order_contracts import ORDER_SAGA
from order_contracts.samples import Scenario, sample_order
from sagakit import Envelope
from sagakit.client import DeadLetters, SagaClient
from sagakit.testing import ServiceProcesses
from sagakit_chaos import (
    INITIAL_STOCK,
    Audit,
    Hostile,
    Ledger,
    Malformed,
    Placement,
    PlannedOrder,
    Seen,
    StoreFaults,
    audit,
    consumers,
    plan_order,
    quiesce,
    read_stores,
    wait_for_end,
)
from sagakit_lab import free_port

from tests.brokers import fresh_broker_url

__all__ = [
    "PARTICIPANTS",
    "CaseResult",
    "FaultSystem",
    "Readiness",
    "broker_connections",
]

logger = logging.getLogger("fault-matrix")

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
SPEC = ORDER_SAGA


# -- what a case found ---------------------------------------------------------------------


@dataclass
class CaseResult:
    """A case's audit, what it saw while the fault lasted, and how long it took."""

    name: str
    seconds: float = 0.0
    audit: Audit | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts per verdict, outcomes, parked reasons, evidence, problems."""
        found = self.audit
        return {
            "case": self.name,
            "seconds": round(self.seconds, 1),
            "skipped": self.skipped,
            "stranded": found.stranded if found else None,
            "wrongly_cancelled": found.wrongly_cancelled if found else None,
            "lost": found.lost if found else None,
            "applied_twice": found.applied_twice if found else None,
            "wrong": found.wrong if found else None,
            "outcomes": dict(found.outcomes) if found else {},
            "cancel_reasons": dict(found.cancel_reasons) if found else {},
            "evidence": self.evidence,
            "problems": self.problems,
        }

    def add_audit(self, found: Audit) -> None:
        """Keep the audit; every failed check becomes a problem."""
        self.audit = found
        for check in found.checks:
            if check.failures:
                examples = "; ".join(check.failures[:4])
                more = f" (+{len(check.failures) - 4} more)" if len(check.failures) > 4 else ""
                self.problems.append(
                    f"{check.name} [{check.verdict.value}]: {len(check.failures)}: {examples}{more}"
                )


# -- readiness -----------------------------------------------------------------------------

# A read-only default for the optional headers of start/publish.
_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


class Readiness:
    """Samples a service's ``/readyz`` every quarter second: (monotonic time, HTTP status;
    0 when nothing answered)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"readyz-{self.port}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def statuses(self, since: float, until: float) -> list[int]:
        return [status for at, status in self.samples if since <= at <= until]

    async def status(self) -> int:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
            return int(line.split()[1])
        except (OSError, TimeoutError, ValueError, IndexError):
            return 0

    async def _run(self) -> None:
        while True:
            status = await self.status()
            self.samples.append((time.monotonic(), status))
            await asyncio.sleep(0.25)


def broker_connections(url: str) -> set[str] | None:
    """The broker's connections on ``url``'s virtual host (their pids), or None when
    ``rabbitmqctl`` cannot tell (not installed, or it serves another broker)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        return None
    vhost = unquote(urlsplit(url).path.lstrip("/")) or "/"
    done = subprocess.run(
        [rabbitmqctl, "-q", "list_connections", "vhost", "pid"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    found = set()
    for line in done.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] == vhost:
            found.add(parts[1])
    # None: rabbitmqctl serves another broker than the URL's (its services have connections).
    return found or None


# -- one case's system ---------------------------------------------------------------------


class FaultSystem:
    """The order system of one case; use ``async with``.

    Args:
        name: The case, for logs and directories.
        workdir: Logs, SQLite files, volumes and clusters go under it.
        layout: Where each participant's store is (default: plain SQLite files).
        service_env: Extra variables for every participant's process (``<P>`` is replaced by
            the participant's prefix, e.g. ``<P>MAX_MESSAGE_BYTES``).
        health: Participants whose ``/readyz`` the case samples.
        seed: The order mix.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        layout: Mapping[str, Placement] | None = None,
        service_env: Mapping[str, str] | None = None,
        health: Collection[str] = (),
        seed: int = 12,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.layout: dict[str, Placement] = dict.fromkeys(PARTICIPANTS, "sqlite")
        self.layout.update(layout or {})
        self.service_env = dict(service_env or {})
        self.health_ports = {participant: free_port() for participant in health}
        self.rng = random.Random(f"{seed}:{name}")
        self.planned: dict[str, PlannedOrder] = {}
        self.expected_parked: dict[str, Malformed] = {}
        self.duplicated: list[Seen] = []
        self.parked: list[str] = []
        self.url = ""
        self._orders = 0
        self._sync = contextlib.ExitStack()
        self._stack = contextlib.AsyncExitStack()
        self.stores: StoreFaults
        self.ledger: Ledger
        self.procs: ServiceProcesses
        self.client: SagaClient

    async def __aenter__(self) -> FaultSystem:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.url = await asyncio.to_thread(self._sync.enter_context, fresh_broker_url())
        self.stores = await self._stack.enter_async_context(
            StoreFaults(self.layout, workdir=self.workdir)
        )
        self.ledger = Ledger(self.url, spec=SPEC)
        self._stack.push_async_callback(self.ledger.close)
        await self.ledger.open()
        service_env: dict[str, dict[str, str]] = {}
        for participant in PARTICIPANTS:
            prefix = participant.upper() + "_"
            env = {key.replace("<P>", prefix): value for key, value in self.service_env.items()}
            env[f"{prefix}DATABASE_URL"] = self.stores.databases[participant]
            if participant in self.health_ports:
                env[f"{prefix}HEALTH_PORT"] = str(self.health_ports[participant])
            service_env[participant] = env
        service_env["inventory"]["INVENTORY_STOCK"] = json.dumps(INITIAL_STOCK)
        self.procs = ServiceProcesses(
            {name: (name, f"{name}_service.main:create_app") for name in PARTICIPANTS},
            spec=SPEC,
            url=self.url,
            log_dir=self.workdir,
            service_env=service_env,
            grace=5.0,
        )
        await self._stack.enter_async_context(self.procs)
        self.client = await self._stack.enter_async_context(
            SagaClient(self.url, SPEC, producer="fault-matrix")
        )
        await self.procs.start(timeout=180)

    async def close(self) -> None:
        """Stop everything this case started (processes first, then stores and broker)."""
        with contextlib.suppress(Exception):
            for participant in PARTICIPANTS:
                self.procs.kill(participant, signal=SIGCONT)  # a held one must hear SIGTERM
        try:
            await self._stack.aclose()
        finally:
            await asyncio.to_thread(self._sync.close)

    # -- sagas ---------------------------------------------------------------------------

    def order(self, scenario: Scenario | None = None) -> PlannedOrder:
        """The next order: of ``scenario``, or drawn from the chaos run's mix."""
        self._orders += 1
        number = self._orders
        if scenario is None:
            return plan_order(self.rng, number)
        return PlannedOrder(scenario, sample_order(scenario, order_id=f"{self.name}-{number}"))

    async def start(self, plan: PlannedOrder, *, headers: Mapping[str, Any] = _NO_HEADERS) -> str:
        """Start a saga for ``plan``; its id."""
        envelope = self.client.new_saga(plan.order)
        saga = str(envelope.context.saga_id)
        self.planned[saga] = plan
        await self.publish(envelope, headers=headers)
        return saga

    async def publish(
        self, envelope: Envelope[Any], *, headers: Mapping[str, Any] = _NO_HEADERS
    ) -> None:
        """Publish ``envelope`` as the client does, with ``headers`` added."""
        await self.client.publish_raw(
            envelope.encode(),
            envelope.event_type,
            headers={**envelope.amqp_headers(), **dict(headers)},
            message_id=str(envelope.event_id),
            correlation_id=str(envelope.context.saga_id),
            type=envelope.event_type,
            content_type="application/json",
            timestamp=envelope.occurred_at,
        )

    async def start_many(
        self,
        count: int,
        *,
        scenarios: Iterable[Scenario] | None = None,
        over: float = 0.0,
    ) -> list[str]:
        """Start ``count`` sagas (cycling ``scenarios``, else the mix), spread over ``over``
        seconds."""
        chosen = list(scenarios or [])
        started = []
        for number in range(count):
            scenario = chosen[number % len(chosen)] if chosen else None
            started.append(await self.start(self.order(scenario)))
            if over:
                await asyncio.sleep(over / count)
        return started

    async def send(self, hostile: Hostile) -> None:
        """Publish a message the case expects to be parked (or, with no ``parked_by``, to be
        dropped as a duplicate)."""
        if hostile.parked_by:
            self.expected_parked[hostile.message_id] = hostile.expected()
        await hostile.publish(self.client)

    # -- watching ------------------------------------------------------------------------

    def events(self, saga: str) -> set[str | None]:
        """The event types of ``saga`` on the wire so far."""
        return {seen.event_type for seen in self.ledger.by_saga.get(saga, [])}

    async def wait_until(
        self, sagas: Iterable[str], has: Callable[[set[str | None]], bool], *, within: float
    ) -> list[str]:
        """Until every saga's events satisfy ``has``; the sagas that still do not."""
        wanted = list(sagas)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + within
        while True:
            missing = [saga for saga in wanted if not has(self.events(saga))]
            if not missing or loop.time() > give_up_at:
                return missing
            await asyncio.sleep(0.2)

    def waiting_at(self, participant: str) -> tuple[int, int]:
        """Sagas waiting for ``participant``: at its step (its trigger on the wire, no
        outcome of it yet), and for its compensation (asked to undo, not yet undone)."""
        [step] = [s for s in SPEC.steps if s.participant == participant]
        at_step = at_compensation = 0
        for saga in self.planned:
            types = self.events(saga)
            if SPEC.terminal_events() & types:
                continue
            if step.trigger in types and not {step.success, step.failure} & types:
                at_step += 1
            if set(step.compensate_on) & types and step.compensated not in types:
                at_compensation += 1
        return at_step, at_compensation

    def hold(self, participant: str) -> None:
        """Freeze a participant's process (SIGSTOP): its deliveries wait, unacked."""
        self.procs.kill(participant, signal=SIGSTOP)

    def release(self, participant: str) -> None:
        """Let a held participant go on (SIGCONT)."""
        self.procs.kill(participant, signal=SIGCONT)

    # -- the end -------------------------------------------------------------------------

    async def settle(self, *, within: float) -> bool:
        """Until every saga has ended or is parked, and the system is at rest; False when
        that took longer than ``within`` seconds (the audit then names what is open)."""
        open_sagas = await wait_for_end(
            self.ledger, self.planned, self.url, participants=PARTICIPANTS, within=within
        )
        rested = await quiesce(
            self.url, self.stores.databases, spec=SPEC, participants=PARTICIPANTS, within=90
        )
        return rested and not open_sagas

    async def audit(self) -> Audit:
        """The chaos run's audit of this system's end state."""
        working = await consumers(self.url, SPEC, PARTICIPANTS)
        await self.ledger.drain()
        async with DeadLetters(self.url, services=PARTICIPANTS) as dead_letters:
            parked = await dead_letters.parked()
        self.parked = [f"{entry.service}: {entry.reason[:100]}" for entry in parked]
        stores = await read_stores(self.stores.databases)
        return audit(
            spec=SPEC,
            consumers=working,
            planned=self.planned,
            ledger=self.ledger,
            parked=parked,
            stores=stores,
            malformed=self.expected_parked,
            duplicated=self.duplicated,
        )

    def oversized_on_the_wire(self, limit: int) -> list[str]:
        """Messages on the wire over ``limit`` bytes, but those the case sent itself."""
        return [
            f"{seen.event_type or seen.routing_key} of saga {seen.saga_id}: {len(seen.body)} B"
            for seen in self.ledger.first.values()
            if len(seen.body) > limit and seen.message_id not in self.expected_parked
        ]
