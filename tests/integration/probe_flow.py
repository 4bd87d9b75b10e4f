"""A two-step flow for exercising sagakit's runtime on a real broker, in-process.

alpha does step ``first`` (undone on beta's failure); beta does step ``second`` (last).
Handlers misbehave on demand through ``Behaviour``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
from sagakit import (
    BusinessFailure,
    Envelope,
    EventPayload,
    Participant,
    ParticipantSettings,
    SagaContext,
    SagaService,
    SagaSpec,
    StepContext,
    StepSpec,
    TransientError,
    build_service,
)
from sagakit.runtime._app import prepare_store
from sagakit.runtime._events import json_properties as _json_properties


class Started(EventPayload):
    event_type: ClassVar[str] = "probe.started"
    subject: str


class AlphaDone(EventPayload):
    event_type: ClassVar[str] = "alpha.done"
    subject: str = ""


class AlphaFailed(EventPayload):
    event_type: ClassVar[str] = "alpha.failed"
    reason: str
    detail: str = ""


class AlphaUndone(EventPayload):
    event_type: ClassVar[str] = "alpha.undone"


class Finished(EventPayload):
    event_type: ClassVar[str] = "probe.finished"


class BetaFailed(EventPayload):
    event_type: ClassVar[str] = "beta.failed"
    reason: str
    detail: str = ""


class Cancelled(EventPayload):
    event_type: ClassVar[str] = "probe.cancelled"
    failed_step: str
    reason: str


PROBE = SagaSpec(
    saga_type="probe",
    exchange="probe",
    start_event="probe.started",
    completed_event="probe.finished",
    cancelled_event="probe.cancelled",
    steps=(
        StepSpec(
            name="first",
            participant="alpha",
            trigger="probe.started",
            success="alpha.done",
            failure="alpha.failed",
            compensate_on=("beta.failed",),
            compensated="alpha.undone",
        ),
        StepSpec(
            name="second",
            participant="beta",
            trigger="alpha.done",
            success="probe.finished",
            failure="beta.failed",
        ),
    ),
    events={
        m.event_type: m
        for m in (Started, AlphaDone, AlphaFailed, AlphaUndone, Finished, BetaFailed, Cancelled)
    },
)


@dataclass
class Behaviour:
    """How the probe handlers misbehave: transient failures to raise before succeeding.

    ``script`` says, per saga id and handler, what each call does in turn: ``transient``
    (TransientError), ``fail`` (BusinessFailure), ``crash`` (SIGKILL of this process: a consumer
    that dies before it acks) or ``ok``; calls past the end of the list succeed. A service
    running as a process reads its script from ``script_file`` on every call (the test
    rewrites it to heal the handlers) and counts calls in ``count_dir`` (they outlive a
    crash).
    """

    first_transient: int = 0
    second_transient: int = 0
    second_fails: bool = False
    undo_transient: int = 0
    # When set, beta's step waits for it before doing anything (within the step timeout).
    second_gate: asyncio.Event | None = None
    calls: dict[str, int] = field(default_factory=dict)
    script: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    script_file: Path | None = None
    count_dir: Path | None = None

    def call(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def follow_script(self, name: str, saga_id: object) -> None:
        """Do what the script says for this call of handler ``name`` in saga ``saga_id``."""
        script = json.loads(self.script_file.read_text()) if self.script_file else self.script
        actions = script.get(str(saga_id), {}).get(name, [])
        if not actions:
            return
        number = self._count(f"{saga_id}.{name}")
        action = actions[number - 1] if number <= len(actions) else "ok"
        if action == "transient":
            raise TransientError(f"{name} scripted to fail (call {number})")
        if action == "fail":
            raise BusinessFailure("rejected", detail=f"{name} scripted to fail")
        if action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)

    def _count(self, key: str) -> int:
        if self.count_dir is None:
            return self.call(key)
        self.count_dir.mkdir(parents=True, exist_ok=True)
        with (self.count_dir / key).open("ab") as calls:
            calls.write(b".")
            return calls.tell()


def probe_services(
    url: str,
    tmp: str,
    behaviour: Behaviour,
    *,
    databases: Mapping[str, str] | None = None,
    **settings: Any,
) -> list[SagaService]:
    """alpha and beta, each with a SQLite file under ``tmp`` unless ``databases`` names
    another store for it."""
    alpha = Participant("alpha", spec=PROBE)
    beta = Participant("beta", spec=PROBE)

    @alpha.on_step("first")
    async def first(event: Started, step: StepContext) -> AlphaDone:
        behaviour.follow_script("first", step.saga_id)
        if behaviour.call("first") <= behaviour.first_transient:
            raise TransientError("alpha's dependency is down")
        return AlphaDone(subject=event.subject)

    @alpha.on_compensation("first")
    async def undo_first(event: EventPayload, step: StepContext) -> AlphaUndone:
        behaviour.follow_script("undo_first", step.saga_id)
        if behaviour.call("undo_first") <= behaviour.undo_transient:
            raise TransientError("cannot undo yet")
        return AlphaUndone()

    @beta.on_step("second")
    async def second(event: AlphaDone, step: StepContext) -> Finished:
        if behaviour.second_gate is not None:
            await behaviour.second_gate.wait()
        behaviour.follow_script("second", step.saga_id)
        if behaviour.call("second") <= behaviour.second_transient:
            raise TimeoutError
        if behaviour.second_fails:
            raise BusinessFailure("rejected", detail="beta says no")
        return Finished()

    defaults: dict[str, Any] = {
        "rabbitmq_url": url,
        "retry_base_delay_seconds": 0.05,
        "retry_max_delay_seconds": 0.2,
        "step_retry_budget": 2,
        "compensation_retry_budget": 2,
    }
    return [
        build_service(
            participant,
            ParticipantSettings(
                database_url=(databases or {}).get(
                    participant.name, f"sqlite+aiosqlite:///{tmp}/{participant.name}.db"
                ),
                **{**defaults, **settings},
            ),
            configure_logs=False,
        )
        for participant in (alpha, beta)
    ]


@asynccontextmanager
async def running(services: list[SagaService]) -> AsyncIterator[None]:
    for service in services:
        await prepare_store(service.runtime.participant, service.store)
        await service.broker.start()
        await service.runtime.start()
    try:
        yield
    finally:
        for service in services:
            await service.runtime.stop()
            await service.broker.stop()
            await service.runtime.relay.settle()
            await service.store.dispose()


class Watch:
    """Every event on the probe exchange, and what lands in a dead-letter queue."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> Watch:
        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            "probe", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                self.events.append(json.loads(message.body))

        await queue.consume(on_message)
        self.channel = channel
        self.exchange = exchange
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close()

    def types(self) -> list[str]:
        return [e["event_type"] for e in self.events]

    async def until(self, event_type: str, timeout: float = 20.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while event_type not in self.types():
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # anything that should NOT follow has its chance to show
        return self.types()

    def saga_types(self, saga: SagaContext) -> list[str]:
        """The types of one saga's events, in arrival order."""
        wanted = str(saga.saga_id)
        return [e["event_type"] for e in self.events if e["context"]["saga_id"] == wanted]

    async def saga_until(
        self, saga: SagaContext, event_type: str, timeout: float = 30.0
    ) -> list[str]:
        """The types of one saga's events once ``event_type`` is among them."""
        async with asyncio.timeout(timeout):
            while event_type not in self.saga_types(saga):
                await asyncio.sleep(0.05)
        return self.saga_types(saga)

    async def start(self, subject: str = "s1", context: SagaContext | None = None) -> Envelope[Any]:
        envelope = Envelope.new(
            Started(subject=subject), context=context or SagaContext.start("probe"), producer="test"
        )
        props = _json_properties(envelope)
        await self.exchange.publish(
            aio_pika.Message(
                envelope.encode(),
                message_id=props["message_id"],
                correlation_id=props["correlation_id"],
                type=props["message_type"],
                content_type=props["content_type"],
                headers={**envelope.amqp_headers()},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=envelope.event_type,
        )
        return envelope

    async def dead_letters(self, participant: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        assert self._connection is not None
        channel = await self._connection.channel()
        queue = await channel.declare_queue(f"{participant}.dlq", passive=True)
        got = []
        while (message := await queue.get(fail=False)) is not None:
            got.append(message)
        await channel.close()  # unacked: they go back to the queue
        return got
