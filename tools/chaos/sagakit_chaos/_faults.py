"""What a chaos run does to the system, planned from the seed, and the hands that do it.

The plan says after which started saga each fault fires; an ``Injector`` carries them out
one at a time (a kill waits for its restart, a broker restart for the broker), while the
sagas keep starting. Crash points (``SAGAKIT_CRASH_AT``) are armed in each service at every
start, within a budget, and fire when their event arrives; a supervisor restarts whatever
died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sagakit import SagaSpec
from sagakit.client import SagaClient
from sagakit.testing import ServiceProcesses, ServiceStartError
from sagakit_lab import RabbitNode, TcpProxy

from ._crashes import CrashPoints
from ._ledger import Ledger, Seen

logger = logging.getLogger("chaos.faults")

MALFORMED_PREFIX = "chaos-malformed-"


class FaultKind(StrEnum):
    """The kinds of fault a run injects."""

    KILL = "kill"  # kill -9 of a random service, restarted after a pause
    CRASH_POINT = "crash_point"  # kill -9 at an armed point: after commit, before publish/ack
    BROKER_RESTART = "broker_restart"  # the run's own RabbitMQ node stopped, then started
    CONNECTION_CUT = "connection_cut"  # every service connection reset by the proxy
    LATENCY = "latency"  # the proxy delays every chunk for a while
    DUPLICATE = "duplicate"  # events seen on the exchange published again
    MALFORMED = "malformed"  # garbage bodies under real routing keys
    BUSINESS_FAILURE = "business_failure"  # orders the reference rules refuse
    STORE_OUTAGE = "store_outage"  # a participant's PostgreSQL stopped (immediate) a while
    DISK_FULL = "disk_full"  # a participant's SQLite volume full for a while
    READ_ONLY = "read_only_store"  # a participant's SQLite volume read-only for a while
    POISON_HEADERS = "poison_headers"  # a start event with a full header table, bad saga id
    AMPLIFICATION = "amplification"  # a start event whose next event would be too large
    CONFLICTING_DUPLICATE = "conflicting_duplicate"  # an event id again, another body
    STRANGER = "stranger"  # a failure or compensation for a saga nobody started


# The faults that reach a participant's store: each needs its store placed for it.
STORE_FAULTS: dict[FaultKind, str] = {
    FaultKind.STORE_OUTAGE: "store_outage",
    FaultKind.DISK_FULL: "disk_full",
    FaultKind.READ_ONLY: "read_only",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: fires once ``after_saga`` sagas have been started."""

    after_saga: int
    kind: FaultKind
    target: str = ""
    seconds: float = 0.0
    latency: float = 0.0
    count: int = 1


@dataclass(frozen=True, slots=True)
class Malformed:
    """A bad message sent to the exchange, who must park it and why (any reason if empty)."""

    message_id: str
    routing_key: str
    shape: str
    parked_by: frozenset[str]
    reasons: tuple[str, ...] = ()


# Faults per 100 sagas (at least one of each kind in any run).
_PER_HUNDRED: dict[FaultKind, float] = {
    FaultKind.KILL: 2.0,
    FaultKind.BROKER_RESTART: 0.2,
    FaultKind.CONNECTION_CUT: 1.5,
    FaultKind.LATENCY: 1.0,
    FaultKind.DUPLICATE: 4.0,
    FaultKind.MALFORMED: 3.0,
}
# Drawn from a random generator of their own, so that adding them left the faults and crash
# points of a seed as they were. A kind the run cannot carry out (a store fault its stores
# are not placed for) is drawn all the same and dropped: both stores get the same schedule.
_MORE_PER_HUNDRED: dict[FaultKind, float] = {
    FaultKind.STORE_OUTAGE: 0.3,
    FaultKind.DISK_FULL: 0.3,
    FaultKind.READ_ONLY: 0.3,
    FaultKind.POISON_HEADERS: 0.3,
    FaultKind.AMPLIFICATION: 0.3,
    FaultKind.CONFLICTING_DUPLICATE: 1.0,
    FaultKind.STRANGER: 1.0,
}


async def until_confirmed(
    publish: Callable[[], Awaitable[None]], *, give_up_after: float = 180.0
) -> int:
    """Call ``publish`` until the broker confirms; returns how many attempts failed.

    The broker may be restarting, or the client reconnecting: publishing the same message
    again is safe, since consumers dedupe by message id (and garbage is parked per copy).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + give_up_after
    failed = 0
    while True:
        try:
            async with asyncio.timeout(10):
                await publish()
            return failed
        except Exception as exc:
            failed += 1
            if loop.time() > give_up_at:
                raise
            logger.info("publish failed (%s), retrying", type(exc).__name__)
            await asyncio.sleep(0.5)


def plan_faults(
    rng: random.Random,
    *,
    sagas: int,
    services: Sequence[str],
    kinds: Collection[FaultKind] | None = None,
    targets: Mapping[FaultKind, Sequence[str]] | None = None,
    more_rng: random.Random | None = None,
) -> list[Fault]:
    """The faults of a run of ``sagas`` sagas, in firing order.

    Only ``kinds`` are kept (default: all); ``targets`` narrows the services a kind may
    hit (a store fault: the services whose store it reaches). The store and hostile-input
    kinds are drawn from ``more_rng`` (default: ``rng``, after the others).
    """
    faults: list[Fault] = []
    rates = [(rng, kind, rate) for kind, rate in _PER_HUNDRED.items()]
    rates += [(more_rng or rng, kind, rate) for kind, rate in _MORE_PER_HUNDRED.items()]
    for draw, kind, per_hundred in rates:
        for _ in range(max(1, round(per_hundred * sagas / 100))):
            # Not in the first or last tenth: faults should meet sagas in flight.
            after = draw.randint(max(1, sagas // 10), max(1, sagas - sagas // 10))
            choices = (targets or {}).get(kind) or services
            fault = _fault(draw, kind, after, choices)
            if kinds is None or kind in kinds:
                faults.append(fault)
    faults.sort(key=lambda fault: fault.after_saga)
    return faults


def _fault(rng: random.Random, kind: FaultKind, after: int, services: Sequence[str]) -> Fault:
    if kind is FaultKind.KILL:
        return Fault(after, kind, target=rng.choice(services), seconds=rng.uniform(0.2, 2.0))
    if kind is FaultKind.BROKER_RESTART:
        return Fault(after, kind, seconds=rng.uniform(1.0, 3.0))
    if kind is FaultKind.LATENCY:
        return Fault(after, kind, seconds=rng.uniform(2.0, 5.0), latency=rng.uniform(0.05, 0.3))
    if kind in (FaultKind.DUPLICATE, FaultKind.MALFORMED):
        return Fault(after, kind, count=rng.randint(1, 5))
    if kind is FaultKind.STORE_OUTAGE:
        return Fault(after, kind, target=rng.choice(services), seconds=rng.uniform(5.0, 45.0))
    if kind in (FaultKind.DISK_FULL, FaultKind.READ_ONLY):
        return Fault(after, kind, target=rng.choice(services), seconds=rng.uniform(3.0, 20.0))
    if kind in (FaultKind.CONFLICTING_DUPLICATE, FaultKind.STRANGER):
        return Fault(after, kind, count=rng.randint(1, 3))
    return Fault(after, kind)


def bound_participants(spec: SagaSpec) -> dict[str, frozenset[str]]:
    """Event type -> the participants whose queues receive it."""
    bound: dict[str, set[str]] = {}
    for step in spec.steps:
        for event in (step.trigger, *step.compensate_on):
            bound.setdefault(event, set()).add(step.participant)
    for reaction in spec.reactions:
        bound.setdefault(reaction.trigger, set()).add(reaction.participant)
    return {event: frozenset(names) for event, names in bound.items()}


class Injector:
    """Carries out faults on a running system and counts what it did.

    Args:
        procs: The services.
        proxy: The proxy between the services and the broker.
        client: A client straight to the broker, for duplicates and garbage.
        ledger: Where the events to duplicate come from.
        spec: The flow.
        rng: Choices made while running (which event to copy, which garbage).
        crashes: The crash points armed in the services, re-armed at each restart.
        broker: The run's own RabbitMQ node, which broker restarts stop and start.
    """

    def __init__(
        self,
        *,
        procs: ServiceProcesses,
        proxy: TcpProxy,
        client: SagaClient,
        ledger: Ledger,
        spec: SagaSpec,
        rng: random.Random,
        crashes: CrashPoints,
        broker: RabbitNode,
    ) -> None:
        self.procs = procs
        self.proxy = proxy
        self.client = client
        self.ledger = ledger
        self.spec = spec
        self.rng = rng
        self.crashes = crashes
        self.broker = broker
        self.done: Counter[str] = Counter()
        self.timeline: list[dict[str, Any]] = []
        self.malformed: dict[str, Malformed] = {}
        self.duplicated: list[Seen] = []
        self.unexpected_exits: list[str] = []
        self.started = 0  # sagas started so far, kept up to date by whoever starts them
        self.started_by_faults = 0  # sagas the faults started themselves (beside their input)
        # Hands for the kinds carried out elsewhere (_hostile, _store_faults).
        self.handlers: dict[FaultKind, Callable[[Fault], Awaitable[None]]] = {}
        self._bound = bound_participants(spec)
        self._lock = asyncio.Lock()
        self._started_at = time.monotonic()
        self._supervisor: asyncio.Task[None] | None = None

    # -- the faults ----------------------------------------------------------------------

    async def apply(self, fault: Fault) -> None:
        """Carry out one fault; waits until a killed service or the broker is back."""
        if fault.kind is FaultKind.KILL:
            await self._kill(fault.target, down=fault.seconds)
        elif fault.kind is FaultKind.BROKER_RESTART:
            await self._restart_broker(down=fault.seconds)
        elif fault.kind is FaultKind.CONNECTION_CUT:
            cut = self.proxy.cut()
            self._note(fault.kind, f"{cut} connection(s) reset")
        elif fault.kind is FaultKind.LATENCY:
            self._note(fault.kind, f"{fault.latency * 1000:.0f} ms for {fault.seconds:.1f}s")
            self.proxy.latency = fault.latency
            try:
                await asyncio.sleep(fault.seconds)
            finally:
                self.proxy.latency = 0.0
        elif fault.kind is FaultKind.DUPLICATE:
            await self._duplicate(fault.count)
        elif fault.kind is FaultKind.MALFORMED:
            await self._malformed(fault.count)
        elif fault.kind in self.handlers:
            await self.handlers[fault.kind](fault)
        else:
            raise ValueError(f"not an injectable fault: {fault.kind}")

    async def _kill(self, service: str, *, down: float) -> None:
        async with self._lock:
            if not self.procs.alive(service):
                await self._revive(service)  # a crash point got there first
            self.procs.kill(service)
            await self.procs.wait_exit(service, timeout=10)
            self._note(FaultKind.KILL, service)
            await asyncio.sleep(down)
            await self._restart(service)

    async def _restart_broker(self, *, down: float) -> None:
        async with self._lock:
            self._note(FaultKind.BROKER_RESTART, f"down for {down:.1f}s")
            # The run's own node, stopped cleanly and started again on the same ports.
            await asyncio.to_thread(self.broker.restart, down=down)

    async def _duplicate(self, count: int) -> None:
        by_type: dict[str, list[Seen]] = {}
        for seen in self.ledger.seen_events():
            if seen.event_type in self._bound:
                by_type.setdefault(seen.event_type, []).append(seen)
        if not by_type:
            return
        for _ in range(count):
            # A type first, so that rarer events (compensations) get copies too.
            seen = self.rng.choice(by_type[self.rng.choice(sorted(by_type))])
            await self._publish_copy(seen)
            self.duplicated.append(seen)
            self._note(FaultKind.DUPLICATE, f"{seen.event_type} of saga {seen.saga_id}")

    async def _publish_copy(self, seen: Seen) -> None:
        await until_confirmed(
            functools.partial(
                self.client.publish_raw,
                seen.body,
                seen.routing_key,
                headers=seen.headers,
                message_id=seen.message_id,
                correlation_id=seen.correlation_id,
                type=seen.type,
                content_type=seen.content_type,
            )
        )

    async def _malformed(self, count: int) -> None:
        for _ in range(count):
            routing_key = self.rng.choice(sorted(self._bound))
            shape, body = self._garbage(routing_key)
            message_id = f"{MALFORMED_PREFIX}{len(self.malformed) + 1:04d}"
            self.malformed[message_id] = Malformed(
                message_id=message_id,
                routing_key=routing_key,
                shape=shape,
                parked_by=self._bound[routing_key],
            )
            await until_confirmed(
                functools.partial(
                    self.client.publish_raw,
                    body,
                    routing_key,
                    message_id=message_id,
                    type=routing_key,
                    content_type="application/json",
                )
            )
            self._note(FaultKind.MALFORMED, f"{shape} as {routing_key}")

    def _garbage(self, routing_key: str) -> tuple[str, bytes]:
        real = [s for s in self.ledger.seen_events() if s.event_type == routing_key]
        other = [s for s in self.ledger.seen_events() if s.event_type != routing_key]
        shapes = ["bytes", "text", "empty", "wrong_schema"]
        if real:
            shapes += ["future_version", "truncated"]
        if other:
            shapes.append("wrong_type")
        shape = self.rng.choice(shapes)
        if shape == "bytes":
            return shape, self.rng.randbytes(self.rng.randint(1, 300))
        if shape == "text":
            return shape, b"this is not an event {"
        if shape == "empty":
            return shape, b""
        if shape == "wrong_schema":
            wrong = {"event_type": routing_key, "context": "none", "payload": 42}
            return shape, json.dumps(wrong).encode()
        if shape == "future_version":
            data = json.loads(self.rng.choice(real).body)
            data["schema_version"] = 99
            return shape, json.dumps(data).encode()
        if shape == "truncated":
            body = self.rng.choice(real).body
            return shape, body[: len(body) // 2]
        return shape, self.rng.choice(other).body  # a real event under another type

    # -- keeping the services up ---------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="chaos-supervisor")

    def raise_if_broken(self) -> None:
        """Raise what stopped the supervisor (a service that would not come back)."""
        if self._supervisor is not None and self._supervisor.done():
            self._supervisor.result()

    async def stop(self) -> None:
        """Stop the supervisor (before the services are stopped on purpose)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            async with self._lock:
                for name in self.procs.names:
                    if not self.procs.alive(name):
                        await self._revive(name)

    async def _revive(self, name: str) -> None:
        # Died unasked: its armed crash point (the marker file appeared), or a real crash.
        point = self.crashes.fired(name)
        if point is not None:
            self._note(FaultKind.CRASH_POINT, f"{name}: {point}")
        else:
            self.unexpected_exits.append(name)
            self.timeline.append({"at": self._now(), "kind": "exit", "detail": name})
            logger.error("%s exited on its own (see its log)", name)
        await self._restart(name)

    async def _restart(self, name: str) -> None:
        failures = 0
        while True:
            self.procs.service_env.setdefault(name, {}).update(self.crashes.env(name))
            try:
                await self.procs.restart(name, timeout=90)
                return
            except ServiceStartError:
                # Its crash point may fire on the first message, before it counts as ready.
                point = self.crashes.fired(name)
                if point is not None:
                    self._note(FaultKind.CRASH_POINT, f"{name}: {point} (while starting)")
                    continue
                failures += 1
                if failures == 3:
                    raise
                logger.warning("%s did not come back (attempt %d), trying again", name, failures)

    async def restore(self) -> None:
        """No latency; every service running."""
        self.proxy.latency = 0.0
        async with self._lock:
            for name in self.procs.names:
                if not self.procs.alive(name):
                    await self._revive(name)

    @property
    def lock(self) -> asyncio.Lock:
        """Held while a fault must not meet a restart (the supervisor waits for it)."""
        return self._lock

    def note(self, kind: FaultKind, detail: str) -> None:
        """Count a fault carried out, and put it on the timeline."""
        self._note(kind, detail)

    def remark(self, what: str, detail: str) -> None:
        """Put something on the timeline that is not a fault (not counted as one)."""
        self.timeline.append({"at": self._now(), "kind": what, "detail": detail})
        logger.info("%s: %s", what, detail)

    def _now(self) -> float:
        return round(time.monotonic() - self._started_at, 2)

    def _note(self, kind: FaultKind, detail: str) -> None:
        self.done[kind.value] += 1
        at = self._now()
        in_flight = self.started + self.started_by_faults - len(self.ledger.ended)
        self.timeline.append(
            {"at": at, "kind": kind.value, "detail": detail, "in_flight": in_flight}
        )
        logger.info("fault %s: %s", kind.value, detail)
