"""In-memory testing of participants: FastStream's TestRabbitBroker plus saga-aware helpers.

Example:
    ```python
    async with ParticipantHarness(create_service(settings)) as harness:
        created = harness.start_saga(order)
        await harness.publish(created)
        assert harness.emitted_types == ["inventory.reserved"]
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

from faststream.rabbit import RabbitBroker, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.testing import build_message
from pydantic import ValidationError

from sagakit._context import SagaContext, StepOutcome, StepRecord, utc_now
from sagakit._envelope import SAGA_ID_HEADER, Envelope, EventPayload
from sagakit._exceptions import BusinessFailure, HandlerError, TransientError
from sagakit.broker._topology import REASON_HEADER, flow_exchange, retry_queue_name
from sagakit.observability._tracing import current_trace_headers
from sagakit.runtime._app import SagaService, prepare_store
from sagakit.runtime._events import json_properties as _json_properties
from sagakit.runtime._participant import HandlerKind, StepContext, Subscription
from sagakit.spec._spec import SagaSpec


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """A message the participant moved to its dead-letter queue."""

    reason: str
    body: bytes
    headers: dict[str, Any]


@dataclass
class ParticipantHarness:
    """Runs one SagaService on an in-memory broker and records what it emits and parks.

    Args:
        service: The service under test; point its settings at a throwaway database.
    """

    service: SagaService
    emitted: list[Envelope[Any]] = field(default_factory=list, init=False)
    parked: list[ParkedMessage] = field(default_factory=list, init=False)
    _published_ids: set[uuid.UUID] = field(default_factory=set, init=False)
    _test_broker: TestRabbitBroker | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        runtime = self.service.runtime
        spec = runtime.spec

        @self.service.broker.subscriber(
            RabbitQueue(f"sagakit.testing.{runtime.name}.events", routing_key="#"),
            runtime.exchange,
        )
        async def record_event(message: RabbitMessage) -> None:
            event_type = str(message.raw_message.routing_key)
            if event_type not in spec.events:
                return
            model = spec.model_for(event_type)
            try:
                envelope = Envelope[model].model_validate_json(message.body)  # type: ignore[valid-type]
            except ValidationError:
                return  # the test's own bad input, not something the service emitted
            if envelope.event_id not in self._published_ids:
                self.emitted.append(envelope)

        @self.service.broker.subscriber(
            RabbitQueue(f"sagakit.testing.{runtime.name}.dlq"),
            runtime.topology.dead_letter_exchange(),
        )
        async def record_parked(message: RabbitMessage) -> None:
            headers = dict(message.headers)
            reason = str(headers.get(REASON_HEADER, ""))
            self.parked.append(ParkedMessage(reason, message.body, headers))

    async def __aenter__(self) -> ParticipantHarness:
        await prepare_store(self.service.runtime.participant, self.service.store)
        self._test_broker = TestRabbitBroker(self.service.broker)
        await self._test_broker.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._test_broker is not None
        await self._test_broker.__aexit__(exc_type, exc, tb)
        # Sent marks are written in the background: let them finish before the store closes.
        await self.service.runtime.relay.settle()
        await self.service.store.dispose()

    @property
    def emitted_types(self) -> list[str]:
        """The types of the emitted events, in order."""
        return [e.event_type for e in self.emitted]

    def start_saga(
        self,
        payload: EventPayload,
        *,
        deadline: datetime | None = None,
        producer: str = "test",
        data: Mapping[str, Any] | None = None,
    ) -> Envelope[Any]:
        """The start event of a new saga, as a client would publish it; ``data`` is what
        the saga's data bag holds (as if earlier steps had added it)."""
        context = SagaContext.start(self.service.runtime.spec.saga_type, deadline=deadline)
        if data:
            context = context.model_copy(update={"data": dict(data)})
        return Envelope.new(payload, context=context, producer=producer)

    def event_after(
        self,
        cause: Envelope[Any],
        payload: EventPayload,
        *,
        producer: str,
        step: str | None = None,
        outcome: StepOutcome = StepOutcome.COMPLETED,
        reason: str | None = None,
    ) -> Envelope[Any]:
        """The event ``producer`` would emit after ``cause``, recording ``step`` if given."""
        record = (
            StepRecord(
                step=step, participant=producer, outcome=outcome, at=utc_now(), reason=reason
            )
            if step is not None
            else None
        )
        context = cause.context.followed_by(cause.event_id, record)
        return Envelope.new(payload, context=context, producer=producer)

    def event(
        self,
        event_type: str,
        payload: EventPayload | None = None,
        *,
        after: Envelope[Any],
        **fields: Any,
    ) -> Envelope[Any]:
        """The event ``event_type`` as the spec has it emitted after ``after``.

        The producer, the step and the outcome recorded in the saga's history come from the
        spec (a success event completes its step, a failure event fails it with the
        payload's reason, a compensated event compensates it); the payload is ``payload``,
        or built from ``fields``, with the field the spec carries filled from ``after``.

        Example:
            ```python
            charged = harness.event("payment.processed", after=reserved, payment_id="p-1",
                                    amount=Decimal("10.00"), currency="EUR")
            ```
        """
        spec = self.service.runtime.spec
        model = spec.model_for(event_type)
        if payload is None:
            carried = {}
            if spec.start_field is not None and spec.start_field in model.model_fields:
                source = after.payload
                if after.event_type != spec.start_event:
                    source = getattr(after.payload, spec.start_field, None)
                if source is not None:
                    carried = {spec.start_field: source.model_dump(mode="json")}
            payload = model.model_validate({**carried, **fields})
        for step in spec.steps:
            roles = {
                step.success: StepOutcome.COMPLETED,
                step.failure: StepOutcome.FAILED,
                step.compensated: StepOutcome.COMPENSATED,
            }
            if event_type in roles:
                outcome = roles[event_type]
                reason = getattr(payload, "reason", None) if outcome is StepOutcome.FAILED else None
                return self.event_after(
                    after,
                    payload,
                    producer=step.participant,
                    step=step.name,
                    outcome=outcome,
                    reason=reason,
                )
        raise ValueError(f"{event_type} is no step's event in {spec.saga_type}")

    async def publish(self, envelope: Envelope[Any]) -> None:
        """Publish ``envelope`` on the flow exchange exactly as it goes on the wire.

        Raises:
            HandlerError: A handler has a bug (``handler_error``): the runtime parked the
                message, as it would in production.
        """
        self._published_ids.add(envelope.event_id)
        parked = len(self.parked)
        await self.service.broker.publish(
            envelope.encode(),
            exchange=self.service.runtime.exchange,
            routing_key=envelope.event_type,
            headers={**envelope.amqp_headers(), **current_trace_headers()},
            **_json_properties(envelope),
        )
        _raise_handler_errors(self.parked[parked:])

    async def publish_raw(
        self, body: bytes, *, routing_key: str, headers: dict[str, Any] | None = None
    ) -> None:
        """Publish arbitrary bytes on the flow exchange (for bad-input tests)."""
        await self.service.broker.publish(
            body, exchange=self.service.runtime.exchange, routing_key=routing_key, headers=headers
        )


INJECTED_REASON = "injected"
"""The reason code of a business failure ``FlowHarness.run`` injects."""


class Fault(StrEnum):
    """A kind of failure ``FlowHarness`` injects into a handler."""

    BUSINESS = "business"
    """``BusinessFailure``: the step fails, the saga is undone (steps only)."""
    TRANSIENT = "transient"
    """``TransientError``: retried with backoff (in memory: at once), then the step fails
    (``retries_exhausted``) or the compensation is parked."""
    TIMEOUT = "timeout"
    """``TimeoutError``, as a handler past the step timeout raises it: retried the same."""


@dataclass(frozen=True, slots=True)
class Injection:
    """A failure injected into one handler of one saga.

    Attributes:
        step: The step whose handler (or compensation) fails.
        fault: What it raises.
        times: How many attempts fail before it runs as written; None for every attempt.
        compensation: Fail the step's compensation instead of the step.
        reason: The reason code of a business failure.
    """

    step: str
    fault: Fault = Fault.BUSINESS
    times: int | None = None
    compensation: bool = False
    reason: str = INJECTED_REASON


EffectProbe = Callable[[SagaService, uuid.UUID], Awaitable[object]]
"""Reads what a participant's state holds for a saga (e.g. its active reservations): falsy
when nothing is in effect."""


@dataclass(frozen=True, slots=True)
class FlowRun:
    """One saga, run through every participant of its flow.

    Attributes:
        spec: The flow.
        saga_id: The saga's id.
        failed_step: The step that failed: the one whose failure event was emitted (where a
            failure was injected, or one the services chose), or None.
        events: What the participants emitted for this saga, in the order it was published
            (events published together, such as a compensation and the cancellation, may
            come in either order).
        undone: The steps whose compensation handler really ran (not a no-op), in order.
        invalid: Events that did not parse as their registered model, with the error (of
            any saga run so far: what does not parse has no saga id to sort it by).
        parked: Messages of this saga a participant moved to its dead-letter queue.
        effects: What each participant's effect probe read once the saga settled.
    """

    spec: SagaSpec
    saga_id: uuid.UUID
    failed_step: str | None
    events: tuple[Envelope[Any], ...]
    undone: tuple[str, ...]
    invalid: tuple[str, ...] = ()
    parked: tuple[ParkedMessage, ...] = ()
    effects: Mapping[str, object] = field(default_factory=dict)

    @property
    def event_types(self) -> list[str]:
        """The types of ``events``, in order."""
        return [e.event_type for e in self.events]

    @property
    def ended(self) -> bool:
        """True when the saga reached its completed or its cancelled event."""
        return any(e.event_type in self.spec.terminal_events() for e in self.events)

    def of_type(self, event_type: str) -> list[Envelope[Any]]:
        """The emitted events of ``event_type``."""
        return [e for e in self.events if e.event_type == event_type]

    def assert_all_or_nothing(self) -> None:
        """Assert that the saga ended all done or all undone, as its spec promises.

        Without a failure: every step completed once, in order, nothing was undone, and
        the completed event was emitted once. With a failure at step k: the steps before k
        completed, k failed, no later step ran; every completed step with an effect was
        compensated exactly once, in reverse order; the cancelled event was emitted once
        and names step k; the completed event never was. With effect probes: after a
        cancellation no participant holds anything for the saga; after a completion every
        participant whose step has a compensation does.
        """
        spec = self.spec
        assert not self.invalid, f"events that break their contract: {self.invalid}"
        assert not self.parked, f"parked: {[p.reason for p in self.parked]}"
        assert self.ended, f"the saga did not end; emitted: {self.event_types}"
        index = (
            len(spec.steps)
            if self.failed_step is None
            else [s.name for s in spec.steps].index(self.failed_step)
        )
        done = spec.steps[:index]
        for step in spec.steps:
            expected = 1 if step in done else 0
            got = len(self.of_type(step.success))
            assert got == expected, f"{step.success} emitted {got} times, expected {expected}"
        must_undo = [s.name for s in reversed(done) if s.has_compensation]
        if self.failed_step is None:
            _assert_terminal(self, spec.completed_event, absent=spec.cancelled_event)
            assert self.undone == (), f"undone without a failure: {self.undone}"
            self._assert_effects(cancelled=False)
            return
        failed = spec.steps[index]
        assert len(self.of_type(failed.failure)) == 1, f"{failed.failure} not emitted once"
        assert list(self.undone) == must_undo, (
            f"compensations ran as {list(self.undone)}, expected {must_undo} "
            "(each completed step once, in reverse order)"
        )
        compensated = [
            e.event_type
            for e in self.events
            if e.event_type in {s.compensated for s in done if s.has_compensation}
        ]
        expected_events = [spec.step(name).compensated for name in must_undo]
        assert compensated == expected_events, (
            f"compensated events {compensated}, expected {expected_events} in this order"
        )
        cancelled = _assert_terminal(self, spec.cancelled_event, absent=spec.completed_event)
        payload = cancelled.payload
        assert getattr(payload, "failed_step", None) == failed.name, (
            f"{spec.cancelled_event} names {getattr(payload, 'failed_step', None)!r} as the "
            f"failed step, expected {failed.name!r}"
        )
        history = [(r.step, r.outcome) for r in cancelled.context.steps]
        expected_history = [
            *((s.name, StepOutcome.COMPLETED) for s in done),
            (failed.name, StepOutcome.FAILED),
            *((name, StepOutcome.COMPENSATED) for name in must_undo),
        ]
        assert history == expected_history, (
            f"the saga's history reads {history}, expected {expected_history}"
        )
        self._assert_effects(cancelled=True)

    def _assert_effects(self, *, cancelled: bool) -> None:
        for participant, effect in self.effects.items():
            if cancelled:
                assert not effect, (
                    f"{participant} still holds {effect!r} for the cancelled saga: its "
                    "compensation ran, but did not undo its state"
                )
            elif any(s.participant == participant and s.has_compensation for s in self.spec.steps):
                assert effect, f"{participant} holds nothing for the completed saga"


def _failed_step(spec: SagaSpec, events: Iterable[Envelope[Any]]) -> str | None:
    failures = {step.failure: step.name for step in spec.steps}
    return next((failures[e.event_type] for e in events if e.event_type in failures), None)


def _raise_handler_errors(parked: Iterable[ParkedMessage]) -> None:
    """A bug in a handler fails the test at once, with the summary the runtime parked."""
    for message in parked:
        if message.reason.startswith("handler_error:"):
            raise HandlerError(message.reason.removeprefix("handler_error: "))


def _assert_terminal(run: FlowRun, event_type: str, *, absent: str) -> Envelope[Any]:
    found = run.of_type(event_type)
    assert len(found) == 1, (
        f"{event_type} emitted {len(found)} times, expected once; emitted: {run.event_types}"
    )
    assert not run.of_type(absent), f"{absent} emitted as well: {run.event_types}"
    return found[0]


class FlowHarness:
    """Runs every participant of a flow together on one in-memory broker.

    Each service keeps its own broker, store and runtime, exactly as it runs in production;
    FastStream's ``TestRabbitBroker`` delivers what any of them publishes to all of them,
    and a retry goes back to its queue at once (the delay queue's wait is skipped). Point
    each service's settings at a throwaway database.

    Args:
        services: One service per participant of the flow.
        effects: Per participant, a probe of what its state holds for a saga, so that
            ``FlowRun.assert_all_or_nothing`` checks that a cancelled saga left nothing.

    Example:
        ```python
        async with FlowHarness([inventory, payment, shipping, notification]) as flow:
            run = await flow.run(sample_order(), fail_at="ship_order")
        run.assert_all_or_nothing()
        assert run.of_type("order.cancelled")[0].payload.reason == "injected"
        ```
    """

    def __init__(
        self, services: Sequence[SagaService], *, effects: Mapping[str, EffectProbe] | None = None
    ) -> None:
        if not services:
            raise ValueError("FlowHarness needs the services of a flow")
        self.spec = services[0].runtime.spec
        names = [s.runtime.name for s in services]
        for service in services:
            if service.runtime.spec.saga_type != self.spec.saga_type:
                raise ValueError(
                    f"{service.runtime.name} takes part in {service.runtime.spec.saga_type}, "
                    f"not {self.spec.saga_type}"
                )
        missing = [p for p in self.spec.participants() if p not in names]
        if missing or len(set(names)) != len(names):
            raise ValueError(
                f"{self.spec.saga_type} needs one service per participant "
                f"{list(self.spec.participants())}, got {names}"
            )
        unknown = [name for name in effects or {} if name not in names]
        if unknown:
            raise ValueError(f"effect probes for {unknown}, which are not participants")
        self.services = tuple(services)
        self.effects = dict(effects or {})
        self._exchange = flow_exchange(self.spec.exchange)
        # The harness is a client of its own: it starts sagas and hears every event. Its
        # broker comes first, so each event is recorded before what it causes.
        self._client = RabbitBroker()
        self._recorded: list[Envelope[Any]] = []
        self._invalid: list[str] = []
        self._undone: list[tuple[uuid.UUID, str]] = []
        self._parked: list[ParkedMessage] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._test_broker: TestRabbitBroker | None = None

        @self._client.subscriber(
            RabbitQueue("sagakit.testing.flow.events", routing_key="#"), self._exchange
        )
        async def record(message: RabbitMessage) -> None:
            event_type = str(message.raw_message.routing_key)
            model = self.spec.events.get(event_type)
            if model is None:
                self._invalid.append(f"{event_type}: no model registered")
                return
            try:
                envelope = Envelope[model].model_validate_json(message.body)  # type: ignore[valid-type]
            except ValidationError as error:
                self._invalid.append(f"{event_type}: {error}")
                return
            self._recorded.append(envelope)

        for service in self.services:
            topology = service.runtime.topology
            self._client.subscriber(
                RabbitQueue(f"sagakit.testing.flow.{topology.participant}.dlq"),
                topology.dead_letter_exchange(),
            )(self._record_parked)
            for sub in service.runtime.subscriptions:
                delay = retry_queue_name(sub.queue)
                self._client.subscriber(
                    RabbitQueue(f"sagakit.testing.{delay}", routing_key=delay),
                    topology.retry_exchange(),
                )(self._retrier(service, sub))

    def _retrier(
        self, service: SagaService, sub: Subscription
    ) -> Callable[[RabbitMessage], Awaitable[None]]:
        # What the delay queue does, without the wait: the message goes back to the one
        # work queue it came from. Later, as its own delivery, not inside the one that
        # scheduled it.
        async def retry(message: RabbitMessage) -> None:
            task = asyncio.create_task(self._redeliver(service, sub, message))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        return retry

    async def _redeliver(self, service: SagaService, sub: Subscription, message: Any) -> None:
        raw = message.raw_message
        target = next(
            s
            for s in service.broker.subscribers
            if getattr(getattr(s, "queue", None), "name", None) == sub.queue
        )
        copy = await build_message(
            message=bytes(message.body),
            exchange=self._exchange,
            routing_key=sub.event_type,
            headers=dict(getattr(raw, "headers", None) or message.headers),
            content_type=getattr(raw, "content_type", None),
            correlation_id=getattr(raw, "correlation_id", None),
            message_id=getattr(raw, "message_id", None),
            message_type=getattr(raw, "type", None),
            persist=True,
        )
        await target.process_message(copy)

    async def _record_parked(self, message: RabbitMessage) -> None:
        headers = dict(message.headers)
        self._parked.append(
            ParkedMessage(str(headers.get(REASON_HEADER, "")), message.body, headers)
        )

    async def __aenter__(self) -> FlowHarness:
        for service in self.services:
            await prepare_store(service.runtime.participant, service.store)
        self._test_broker = TestRabbitBroker(self._client, *(s.broker for s in self.services))
        await self._test_broker.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._test_broker is not None
        await self._settle()
        await self._test_broker.__aexit__(exc_type, exc, tb)
        for service in self.services:
            await service.runtime.relay.settle()
            await service.store.dispose()

    async def _settle(self) -> None:
        """Wait until no retry is on its way."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def run(
        self,
        payload: EventPayload,
        *,
        fail_at: str | None = None,
        fault: Fault = Fault.BUSINESS,
        times: int | None = None,
        reason: str = INJECTED_REASON,
        inject: Sequence[Injection] = (),
        deadline: datetime | None = None,
    ) -> FlowRun:
        """Start a saga with ``payload`` and return what happened once it has settled.

        Args:
            payload: The start event's payload.
            fail_at: A step whose handler fails with ``fault`` instead of running, for this
                saga only; None for no failure.
            fault: What the step raises: a business failure, a transient error, a timeout.
            times: How many attempts fail (None: every one; a transient error or timeout
                then exhausts the step's retries, and the step fails).
            reason: The reason code of an injected business failure.
            inject: More failures, e.g. in a compensation:
                ``Injection("charge", Fault.TRANSIENT, times=2, compensation=True)``.
            deadline: The saga's deadline, if any.

        Raises:
            HandlerError: A handler has a bug (the runtime parked its message).
        """
        injections = list(inject)
        if fail_at is not None:
            injections.append(Injection(fail_at, fault, times=times, reason=reason))
        for injection in injections:
            step = self.spec.step(injection.step)
            if injection.compensation and not step.has_compensation:
                raise ValueError(f"step {step.name} has no compensation to fail")
            if injection.compensation and injection.fault is Fault.BUSINESS:
                raise ValueError("a compensation cannot fail as a business failure")
        context = SagaContext.start(self.spec.saga_type, deadline=deadline)
        start = Envelope.new(payload, context=context, producer="sagakit.testing")
        saga_id = start.context.saga_id
        with self._instrumented(saga_id, injections):
            await self._client.publish(
                start.encode(),
                exchange=self._exchange,
                routing_key=start.event_type,
                headers={**start.amqp_headers(), **current_trace_headers()},
                **_json_properties(start),
            )
            await self._settle()
        parked = tuple(p for p in self._parked if p.headers.get(SAGA_ID_HEADER) == str(saga_id))
        _raise_handler_errors(parked)
        events = tuple(
            e
            for e in self._recorded
            if e.context.saga_id == saga_id and e.event_id != start.event_id
        )
        effects = {}
        for service in self.services:
            probe = self.effects.get(service.runtime.name)
            if probe is not None:
                effects[service.runtime.name] = await probe(service, saga_id)
        return FlowRun(
            spec=self.spec,
            saga_id=saga_id,
            failed_step=_failed_step(self.spec, events),
            events=events,
            undone=tuple(step for saga, step in self._undone if saga == saga_id),
            invalid=tuple(self._invalid),
            parked=parked,
            effects=effects,
        )

    @contextlib.contextmanager
    def _instrumented(self, saga_id: uuid.UUID, injections: list[Injection]) -> Iterator[None]:
        # Subscriptions are frozen, and the runtime calls ``sub.handler`` when an event
        # arrives: swapping it for one saga is the smallest seam that leaves the runtime,
        # its transactions and its rules exactly as they run in production.
        swapped: list[tuple[Subscription, Callable[..., Awaitable[Any]]]] = []
        for service in self.services:
            for sub in service.runtime.subscriptions:
                if sub.kind is HandlerKind.REACTION:
                    continue
                replacement = sub.handler
                if sub.kind is HandlerKind.COMPENSATION:
                    replacement = _recording(replacement, sub.name, self._undone)
                compensation = sub.kind is HandlerKind.COMPENSATION
                for injection in injections:
                    if injection.step == sub.name and injection.compensation == compensation:
                        replacement = _injecting(replacement, saga_id, injection)
                swapped.append((sub, sub.handler))
                object.__setattr__(sub, "handler", replacement)
        try:
            yield
        finally:
            for sub, original in swapped:
                object.__setattr__(sub, "handler", original)


def _injecting(
    handler: Callable[..., Awaitable[Any]], saga_id: uuid.UUID, injection: Injection
) -> Callable[..., Awaitable[Any]]:
    # One count per injection, shared by every trigger of a compensation.
    calls = [0]

    async def fail(payload: Any, step: StepContext) -> Any:
        if step.saga_id == saga_id:
            calls[0] += 1
            if injection.times is None or calls[0] <= injection.times:
                detail = "failure injected by sagakit.testing"
                if injection.fault is Fault.BUSINESS:
                    raise BusinessFailure(injection.reason, detail=detail)
                if injection.fault is Fault.TRANSIENT:
                    raise TransientError(detail)
                raise TimeoutError(detail)
        return await handler(payload, step)

    return fail


def _recording(
    handler: Callable[..., Awaitable[Any]], step_name: str, undone: list[tuple[uuid.UUID, str]]
) -> Callable[..., Awaitable[Any]]:
    async def undo(payload: Any, step: StepContext) -> Any:
        result = await handler(payload, step)
        undone.append((step.saga_id, step_name))
        return result

    return undo


async def assert_all_or_nothing(
    services: Sequence[SagaService],
    payload: EventPayload,
    *,
    fail_at: str | None = None,
    fault: Fault = Fault.BUSINESS,
    effects: Mapping[str, EffectProbe] | None = None,
) -> FlowRun:
    """Run one saga through ``services`` and assert it ended all done or all undone.

    Args:
        services: One service per participant, each on a throwaway database.
        payload: The start event's payload; it must succeed at every step on its own, so
            that the only failure is the injected one.
        fail_at: The step to fail with ``fault`` on every attempt, or None for the forward
            path.
        fault: What the step raises.
        effects: Per participant, a probe of its state for the saga (see ``FlowHarness``).

    Example:
        ```python
        @pytest.mark.parametrize("fail_at", [None, *(s.name for s in MY_SAGA.steps)])
        async def test_all_or_nothing(services, fail_at):
            await assert_all_or_nothing(services, my_start_payload(), fail_at=fail_at)
        ```
    """
    async with FlowHarness(services, effects=effects) as flow:
        run = await flow.run(payload, fail_at=fail_at, fault=fault)
    run.assert_all_or_nothing()
    assert run.failed_step == fail_at, f"failed at {run.failed_step}, expected {fail_at}"
    return run
