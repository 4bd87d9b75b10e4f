"""The saga rules every participant keeps, as one pytest test class to subclass.

The rules are the runtime's, so every participant keeps them the same way; what differs is
the participant's wiring (its subscriptions, its handlers, its tables), which is what the
suite exercises: each test runs the real service on FastStream's in-memory broker, with its
real handlers (wrapped to count their calls), against a throwaway SQLite database.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

from sagakit._context import StepOutcome, utc_now
from sagakit._envelope import Envelope, EventPayload
from sagakit.runtime._app import SagaService
from sagakit.runtime._participant import HandlerKind, StepContext, Subscription
from sagakit.spec._spec import SagaSpec, StepSpec
from sagakit.testing._harness import ParticipantHarness

_REASON = "conformance_failure"
_FuncT = TypeVar("_FuncT", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Case:
    """One subscription of the participant under test, as its spec declares it.

    Attributes:
        kind: Step, compensation or reaction.
        name: The step's or the reaction's name.
        event_type: The event it consumes.
    """

    kind: HandlerKind
    name: str
    event_type: str

    @property
    def id(self) -> str:
        """The test id: ``step:reserve_stock@order.created``."""
        return f"{self.kind.value}:{self.name}@{self.event_type}"


BAD_INPUT = {
    "not_json": "undecodable",
    "schema_invalid": "schema_invalid",
    "schema_version": "unsupported_schema_version",
    "saga_type": "unknown_saga_type",
    "too_large": "too_large",
    "start_event_with_steps": "start_event_with_steps",
}
"""How the bad-input test spoils a message, and the parking reason it expects. A start event
with steps only applies to a subscription to the flow's start event."""


def _for(*kinds: HandlerKind) -> Callable[[_FuncT], _FuncT]:
    """Run the decorated test once per subscription of these kinds."""

    def mark(test: _FuncT) -> _FuncT:
        test._conformance_kinds = kinds  # type: ignore[attr-defined]
        return test

    return mark


class ParticipantConformance:
    """Subclass it in a participant's contract tests: every saga rule, tested on the service.

    Set ``spec`` and ``participant``, and give the service factory (``create_service``) and
    the start payload of a saga that this participant's steps complete (``start_payload``).
    The suite builds every other event from the spec: the events before a step (the flow's
    earlier steps succeeded), the events that ask for its compensation (a later step
    failed, or was undone), and what each reaction consumes. Then, for each subscription the
    spec gives the participant, it checks:

    - a duplicate delivery is handled once (the handler runs once; nothing is emitted twice);
    - a second compensation request announces the compensated event again (same event id)
      and undoes nothing;
    - a compensation request for a saga never seen here is parked as ``unknown_saga``, and
      does not hold back the saga it names; one for a step that failed itself is ignored;
    - a forward event after the step completed, failed or was compensated runs nothing;
    - a saga past its deadline fails the step (``deadline_exceeded``) without running it; a
      future deadline does not;
    - bad input is parked with its reason (undecodable, schema-invalid, unsupported schema
      version, unknown saga type, too large, a start event with steps; another body under a
      known event id), and the consumer goes on serving;
    - no personal data reaches a log line (``personal_data``).

    Each test runs once per subscription it applies to (``case``); a rule that applies to
    none of the participant's subscriptions is left out of the subclass (not collected).
    The tests are ``async``: run them with pytest-asyncio in auto mode (or mark the subclass
    ``asyncio``).

    Example:
        ```python
        from order_contracts import ORDER_SAGA
        from order_contracts.samples import sample_order
        from sagakit.testing import ParticipantConformance

        class TestInventoryRules(ParticipantConformance):
            spec = ORDER_SAGA
            participant = "inventory"

            def create_service(self, database_url: str) -> SagaService:
                return create_service(InventorySettings(database_url=database_url))

            def start_payload(self) -> EventPayload:
                return sample_order()

            def personal_data(self, start: EventPayload) -> list[str]:
                return [start.customer.email, start.shipping_address.line1]
        ```
    """

    spec: ClassVar[SagaSpec]
    participant: ClassVar[str]

    # -- what a subclass gives ---------------------------------------------------------

    def create_service(self, database_url: str) -> SagaService:
        """The participant's service on ``database_url`` (a fresh SQLite file per test)."""
        raise NotImplementedError("give the service factory: create_service(database_url)")

    def start_payload(self) -> EventPayload:
        """The start event's payload of a saga that this participant's steps complete."""
        raise NotImplementedError("give a start payload that the participant's steps complete")

    def sample_payloads(self) -> Sequence[EventPayload]:
        """Start payloads the personal-data check drives through every subscription; add
        ones that make this participant's step fail for a business reason."""
        return [self.start_payload()]

    def saga_data(self) -> dict[str, Any]:
        """What the saga's data bag holds when this participant's handlers run (what
        earlier steps add with ``StepContext.add_data``)."""
        return {}

    def personal_data(self, start: EventPayload) -> Sequence[str]:
        """The personal data ``start`` carries, which no log line may contain; the check is
        skipped while this says none."""
        return ()

    def payload_for(self, event_type: str, start: EventPayload, **fields: Any) -> EventPayload:
        """The payload of ``event_type`` in the saga started with ``start``.

        The default fills the spec's ``start_field`` with the start payload, then ``fields`` (a
        failure's ``reason``, a cancellation's ``failed_step``), then each other required
        field from the start payload's field of the same name, the example its JSON schema
        gives, or a placeholder of its type. Override it for a model that needs more.
        """
        if event_type == self.spec.start_event:
            return start
        model = self.spec.model_for(event_type)
        fields_of_model = model.model_fields
        values: dict[str, Any] = {}
        carry = self.spec.start_field
        if carry is not None and carry in fields_of_model:
            values[carry] = start.model_dump(mode="json")
        values.update({k: v for k, v in fields.items() if k in fields_of_model})
        from_start = start.model_dump(mode="json")
        properties = model.model_json_schema().get("properties", {})
        for name, info in fields_of_model.items():
            if name in values or not info.is_required():
                continue
            values[name] = (
                from_start[name] if name in from_start else _placeholder(name, properties)
            )
        try:
            return model.model_validate(values)
        except ValidationError as error:
            raise TypeError(
                f"cannot make a {event_type} payload from the spec alone; override"
                f" payload_for for it ({error})"
            ) from error

    # -- parametrization ---------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Leave out of the subclass the rules that apply to none of its subscriptions (a
        participant whose step has no compensation has no compensation rules to run), so
        that pytest neither collects nor skips them."""
        super().__init_subclass__(**kwargs)
        if not (hasattr(cls, "spec") and hasattr(cls, "participant")):
            return  # an intermediate class: its subclasses name the participant
        kinds_present = {case.kind for case in cls.cases()}
        for name in dir(cls):
            kinds = getattr(getattr(cls, name), "_conformance_kinds", None)
            if name.startswith("test_") and kinds and not kinds_present & set(kinds):
                # pytest's way to drop an inherited test: shadow it with a non-callable.
                setattr(cls, name, None)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Run each test once per subscription it applies to (pytest calls this)."""
        if "case" not in metafunc.fixturenames:
            return
        kinds = getattr(metafunc.function, "_conformance_kinds", tuple(HandlerKind))
        cases = [case for case in self.cases() if case.kind in kinds]
        if "bad" in metafunc.fixturenames:
            pairs = [(case, bad) for case in cases for bad in self._bad_input(case)]
            ids = [f"{case.id}-{bad}" for case, bad in pairs]
            metafunc.parametrize(("case", "bad"), pairs, ids=ids)
        else:
            metafunc.parametrize("case", cases, ids=[case.id for case in cases])

    @classmethod
    def cases(cls) -> list[Case]:
        """Every subscription the spec gives the participant."""
        found: list[Case] = []
        for step in cls.spec.steps:
            if step.participant != cls.participant:
                continue
            found.append(Case(HandlerKind.STEP, step.name, step.trigger))
            found.extend(
                Case(HandlerKind.COMPENSATION, step.name, trigger) for trigger in step.compensate_on
            )
        found.extend(
            Case(HandlerKind.REACTION, reaction.name, reaction.trigger)
            for reaction in cls.spec.reactions
            if reaction.participant == cls.participant
        )
        return found

    # -- the rules ---------------------------------------------------------------------

    async def test_a_duplicate_delivery_is_handled_once(self, tmp_path: Path, case: Case) -> None:
        async with self._running(tmp_path) as run:
            start = run.start()
            if case.kind is HandlerKind.COMPENSATION:
                await run.publish(run.event(self._step(case).trigger, start))
            trigger = run.event(case.event_type, start)
            await run.publish(trigger)
            emitted = run.emitted()
            assert run.calls(case) == 1, f"{case.id}: the handler did not run"

            await run.publish(trigger)

            assert run.calls(case) == 1, f"{case.id}: a duplicate ran the handler again"
            assert run.emitted() == emitted, f"{case.id}: a duplicate emitted events again"
            assert run.harness.parked == []

    @_for(HandlerKind.COMPENSATION)
    async def test_a_second_compensation_request_announces_again_and_undoes_nothing(
        self, tmp_path: Path, case: Case
    ) -> None:
        step = self._step(case)
        async with self._running(tmp_path) as run:
            start = run.start()
            await run.publish(run.event(step.trigger, start))
            await run.publish(run.event(case.event_type, start))
            first = run.emitted()[1:]
            assert [e.event_type for e in first][:1] == [step.compensated]
            others = [t for t in step.compensate_on if t != case.event_type]
            # Another request for the same saga: another trigger, or the same one anew.
            second = run.event(others[0] if others else case.event_type, start)

            await run.publish(second)

            again = run.emitted()[1 + len(first) :]
            assert [e.event_type for e in again] == [e.event_type for e in first]
            # The same derived ids: consumers downstream drop the repeat in their inbox.
            assert [e.event_id for e in again] == [e.event_id for e in first]
            assert run.calls(case) + sum(run.calls(c) for c in self._others(case)) == 1, (
                "the step was undone twice"
            )

    @_for(HandlerKind.COMPENSATION)
    async def test_a_compensation_request_for_a_saga_never_seen_is_parked_as_unknown_saga(
        self, tmp_path: Path, case: Case
    ) -> None:
        step = self._step(case)
        async with self._running(tmp_path) as run:
            start = run.start()

            await run.publish(run.event(case.event_type, start))

            # Nothing undone, nothing announced: no notice of a saga nobody started here.
            assert run.emitted() == []
            assert run.calls(case) == 0
            [parked] = run.harness.parked
            assert parked.reason.startswith(
                f"unknown_saga: {case.event_type} asks {self.participant} to undo"
            ), parked.reason
            # The parked request left no trace: the saga's own step runs as usual.
            await run.publish(run.event(step.trigger, start))
            assert [e.event_type for e in run.emitted()] == [step.success]

    @_for(HandlerKind.COMPENSATION)
    async def test_a_compensation_request_for_a_step_that_failed_itself_is_ignored(
        self, tmp_path: Path, case: Case
    ) -> None:
        step = self._step(case)
        async with self._running(tmp_path) as run:
            start = run.start(deadline_passed=True)
            await run.publish(run.event(step.trigger, start))
            failed = run.emitted()
            assert failed[0].event_type == step.failure

            await run.publish(run.event(case.event_type, start))

            assert run.emitted() == failed
            assert run.calls(case) == 0
            assert run.harness.parked == []

    @_for(HandlerKind.STEP)
    async def test_a_second_forward_event_for_the_saga_runs_nothing(
        self, tmp_path: Path, case: Case
    ) -> None:
        async with self._running(tmp_path) as run:
            start = run.start()
            await run.publish(run.event(case.event_type, start))
            done = run.emitted()
            assert [e.event_type for e in done] == [self._step(case).success]

            # Another event id for the same saga: the inbox does not know it, the step does.
            await run.publish(run.event(case.event_type, start))

            assert run.emitted() == done
            assert run.calls(case) == 1
            assert run.harness.parked == []

    @_for(HandlerKind.COMPENSATION)
    async def test_forward_work_after_compensation_runs_nothing(
        self, tmp_path: Path, case: Case
    ) -> None:
        step = self._step(case)
        forward = Case(HandlerKind.STEP, step.name, step.trigger)
        async with self._running(tmp_path) as run:
            start = run.start()
            await run.publish(run.event(step.trigger, start))
            await run.publish(run.event(case.event_type, start))
            undone = run.emitted()

            # The step's trigger again (a republish, a replay): a saga is never resurrected.
            await run.publish(run.event(step.trigger, start))

            assert run.emitted() == undone
            assert (run.calls(forward), run.calls(case)) == (1, 1)
            assert run.harness.parked == []

    @_for(HandlerKind.STEP)
    async def test_a_past_deadline_fails_the_step_without_running_it(
        self, tmp_path: Path, case: Case
    ) -> None:
        step = self._step(case)
        async with self._running(tmp_path) as run:
            start = run.start(deadline_passed=True)

            await run.publish(run.event(case.event_type, start))

            emitted = run.emitted()
            expected = [step.failure]
            if self.spec.ends_backward_path(step):
                expected.append(self.spec.cancelled_event)
            assert [e.event_type for e in emitted] == expected
            assert getattr(emitted[0].payload, "reason", None) == "deadline_exceeded"
            record = emitted[0].context.steps[-1]
            assert (record.step, record.participant, record.outcome, record.reason) == (
                step.name,
                self.participant,
                StepOutcome.FAILED,
                "deadline_exceeded",
            )
            if self.spec.ends_backward_path(step):
                # sagakit writes the cancellation's failed_step and reason itself.
                cancelled = emitted[1].payload
                assert (cancelled.failed_step, cancelled.reason) == (step.name, "deadline_exceeded")
            assert run.calls(case) == 0

    @_for(HandlerKind.STEP)
    async def test_a_future_deadline_does_not_stop_the_step(
        self, tmp_path: Path, case: Case
    ) -> None:
        async with self._running(tmp_path) as run:
            start = run.start(deadline=utc_now() + timedelta(minutes=5))

            await run.publish(run.event(case.event_type, start))

            assert [e.event_type for e in run.emitted()] == [self._step(case).success]
            assert run.calls(case) == 1

    @_for(HandlerKind.STEP)
    async def test_a_forward_event_after_the_step_failed_runs_nothing(
        self, tmp_path: Path, case: Case
    ) -> None:
        async with self._running(tmp_path) as run:
            start = run.start(deadline_passed=True)
            await run.publish(run.event(case.event_type, start))
            failed = run.emitted()
            # The same saga's forward event again, now without a deadline that could fail it.
            late = run.event(
                case.event_type, start.model_copy(update={"context": _no_deadline(start)})
            )

            await run.publish(late)

            assert run.emitted() == failed
            assert run.calls(case) == 0

    async def test_bad_input_is_parked_with_its_reason(
        self, tmp_path: Path, case: Case, bad: str
    ) -> None:
        async with self._running(tmp_path) as run:
            start = run.start()
            if case.kind is HandlerKind.COMPENSATION:
                await run.publish(run.event(self._step(case).trigger, start))
            before = run.emitted()
            trigger = run.event(case.event_type, start)
            limit = run.harness.service.settings.max_message_bytes

            await run.harness.publish_raw(
                _spoiled(trigger, bad, limit=limit), routing_key=case.event_type
            )

            [parked] = run.harness.parked
            assert parked.reason.startswith(BAD_INPUT[bad]), parked.reason
            assert parked.headers["x-saga-origin-queue"] == f"{self.participant}.{case.event_type}"
            assert run.emitted() == before
            assert run.calls(case) == 0
            # The consumer lives on: the next valid event is served.
            await run.publish(trigger)
            assert run.calls(case) == 1

    async def test_another_body_under_a_known_event_id_is_parked_as_conflicting_duplicate(
        self, tmp_path: Path, case: Case
    ) -> None:
        async with self._running(tmp_path) as run:
            start = run.start()
            if case.kind is HandlerKind.COMPENSATION:
                await run.publish(run.event(self._step(case).trigger, start))
            trigger = run.event(case.event_type, start)
            await run.publish(trigger)
            handled = run.emitted()

            await run.publish(trigger.model_copy(update={"producer": "someone-else"}))

            [parked] = run.harness.parked
            assert parked.reason.startswith("conflicting_duplicate"), parked.reason
            assert run.emitted() == handled
            assert run.calls(case) == 1

    async def test_no_personal_data_in_logs(self, tmp_path: Path, caplog: Any) -> None:
        samples = list(self.sample_payloads())
        personal = sorted({value for s in samples for value in self.personal_data(s) if value})
        if not personal:
            import pytest

            pytest.skip("personal_data() names no personal data to look for")
        # The service's loggers at their most talkative, everything else at INFO.
        caplog.set_level(logging.INFO)
        service_loggers = ("sagakit", f"{self.participant}_service", self.participant)
        for name in service_loggers:
            caplog.set_level(logging.DEBUG, logger=name)
        async with self._running(tmp_path) as run:
            for sample in samples:
                for case in self.cases():
                    start = run.start(payload=sample)
                    if case.kind is HandlerKind.COMPENSATION:
                        await run.publish(run.event(self._step(case).trigger, start))
                    await run.publish(run.event(case.event_type, start))
                    late = run.start(payload=sample, deadline_passed=True)
                    await run.publish(run.event(case.event_type, late))
                    spoiled = _spoiled(run.event(case.event_type, start), "schema_invalid")
                    await run.harness.publish_raw(spoiled, routing_key=case.event_type)

        assert caplog.records, "nothing was logged, so nothing was checked"
        for record in caplog.records:
            line = record.getMessage()
            assert not any(value in line for value in personal), line

    # -- helpers -----------------------------------------------------------------------

    def _step(self, case: Case) -> StepSpec:
        return self.spec.step(case.name)

    def _others(self, case: Case) -> list[Case]:
        return [
            c for c in self.cases() if c.kind is case.kind and c.name == case.name and c != case
        ]

    def _bad_input(self, case: Case) -> list[str]:
        if case.event_type == self.spec.start_event:
            return list(BAD_INPUT)
        return [bad for bad in BAD_INPUT if bad != "start_event_with_steps"]

    @contextlib.asynccontextmanager
    async def _running(self, tmp_path: Path) -> AsyncIterator[_Run]:
        service = self.create_service(f"sqlite+aiosqlite:///{tmp_path}/conformance.db")
        async with ParticipantHarness(service) as harness:
            run = _Run(self, harness)
            with run.counting():
                yield run


class _Run:
    """One test's service, its handlers counted, and the events of its sagas."""

    def __init__(self, suite: ParticipantConformance, harness: ParticipantHarness) -> None:
        self.suite = suite
        self.spec = suite.spec
        self.harness = harness
        self._calls: dict[tuple[HandlerKind, str, str], int] = {}

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        # Subscriptions are frozen, and the runtime calls ``sub.handler`` for each event:
        # wrapping it leaves the runtime, its transactions and its rules as they run.
        subs = self.harness.service.runtime.subscriptions
        originals = [(sub, sub.handler) for sub in subs]
        for sub, handler in originals:
            object.__setattr__(sub, "handler", self._counted(sub, handler))
        try:
            yield
        finally:
            for sub, handler in originals:
                object.__setattr__(sub, "handler", handler)

    def _counted(
        self, sub: Subscription, handler: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        key = (sub.kind, sub.name, sub.event_type)

        async def counted(payload: Any, step: StepContext) -> Any:
            # Counted as it is called: the rules say when a handler may not even start (a
            # handler that fails on a repeat would otherwise hide a broken rule).
            self._calls[key] = self._calls.get(key, 0) + 1
            return await handler(payload, step)

        return counted

    def calls(self, case: Case) -> int:
        """How many times the handler of ``case`` was called."""
        return self._calls.get((case.kind, case.name, case.event_type), 0)

    def emitted(self) -> list[Envelope[Any]]:
        """What the participant emitted, in order."""
        return [e for e in self.harness.emitted if e.producer == self.suite.participant]

    def start(
        self,
        *,
        payload: EventPayload | None = None,
        deadline: Any = None,
        deadline_passed: bool = False,
    ) -> Envelope[Any]:
        """The start event of a new saga (not published)."""
        if deadline_passed:
            deadline = utc_now() - timedelta(seconds=1)
        return self.harness.start_saga(
            payload if payload is not None else self.suite.start_payload(),
            deadline=deadline,
            data=self.suite.saga_data(),
        )

    async def publish(self, envelope: Envelope[Any]) -> None:
        await self.harness.publish(envelope)

    def event(self, event_type: str, start: Envelope[Any]) -> Envelope[Any]:
        """``event_type`` in the saga of ``start``, after the history that leads to it: the
        steps before it completed; for a failure, that step failed; for a compensated event,
        the next step failed and it was undone; for the cancellation, the
        first step failed. Each call makes new event ids."""
        spec = self.spec
        if event_type == spec.start_event:
            # The same saga started again (a client's retry, a replay): another event id.
            return Envelope.new(start.payload, context=start.context, producer=start.producer)
        for index, step in enumerate(spec.steps):
            if event_type == step.success:
                return self._completed(start, spec.steps[: index + 1])
            if event_type == step.failure:
                return self._failed(self._completed(start, spec.steps[:index]), step, start.payload)
            if event_type == step.compensated:
                if index + 1 == len(spec.steps):
                    break  # nothing after the last step fails to undo it
                done = spec.steps[: index + 1]
                envelope = self._completed(start, done)
                envelope = self._failed(envelope, spec.steps[index + 1], start.payload)
                return self._compensated(envelope, step, start.payload)
        if event_type == spec.cancelled_event:
            first = spec.steps[0]
            failed = self._failed(start, first, start.payload)
            payload = self.suite.payload_for(
                event_type, start.payload, failed_step=first.name, reason=_REASON
            )
            return self.harness.event_after(failed, payload, producer=first.participant)
        raise TypeError(f"the conformance suite cannot make {event_type!r} from the spec")

    def _completed(self, start: Envelope[Any], steps: Sequence[StepSpec]) -> Envelope[Any]:
        envelope = start
        for step in steps:
            payload = self.suite.payload_for(step.success, start.payload)
            envelope = self.harness.event_after(
                envelope, payload, producer=step.participant, step=step.name
            )
        return envelope

    def _failed(self, cause: Envelope[Any], step: StepSpec, started: EventPayload) -> Envelope[Any]:
        payload = self.suite.payload_for(step.failure, started, reason=_REASON, detail="")
        return self.harness.event_after(
            cause,
            payload,
            producer=step.participant,
            step=step.name,
            outcome=StepOutcome.FAILED,
            reason=_REASON,
        )

    def _compensated(
        self, cause: Envelope[Any], step: StepSpec, started: EventPayload
    ) -> Envelope[Any]:
        assert step.compensated is not None
        payload = self.suite.payload_for(step.compensated, started)
        return self.harness.event_after(
            cause,
            payload,
            producer=step.participant,
            step=step.name,
            outcome=StepOutcome.COMPENSATED,
        )


def _no_deadline(start: Envelope[Any]) -> Any:
    return start.context.model_copy(update={"deadline": None})


def _placeholder(name: str, properties: dict[str, Any]) -> Any:
    schema = properties.get(name, {})
    examples = schema.get("examples")
    if examples:
        return examples[0]
    kinds = {t.get("type") for t in schema.get("anyOf", [])} | {schema.get("type")}
    if "string" in kinds:
        return f"conformance-{name}"
    if "integer" in kinds or "number" in kinds:
        return 1
    if "boolean" in kinds:
        return False
    return None


def _spoiled(envelope: Envelope[Any], how: str, *, limit: int = 0) -> bytes:
    """``envelope`` on the wire, spoiled as ``how`` says (one of ``BAD_INPUT``)."""
    if how == "not_json":
        return b"\xff{this is not json"
    if how == "too_large":
        return b" " * (limit + 1)
    body = json.loads(envelope.encode())
    now = utc_now().isoformat()
    if how == "schema_invalid":
        # Without its first required field, the payload fails its model.
        model = type(envelope.payload)
        required = next(n for n, info in model.model_fields.items() if info.is_required())
        del body["payload"][required]
    elif how == "schema_version":
        body["schema_version"] = int(body.get("schema_version", 1)) + 1
    elif how == "saga_type":
        body["context"]["saga_type"] = f"not_{body['context']['saga_type']}"
    elif how == "start_event_with_steps":
        # A history no start event can have: every later event would carry it.
        body["context"]["steps"] = [
            {"step": "invented", "participant": "someone", "outcome": "completed", "at": now}
        ]
    else:
        raise ValueError(f"unknown bad input {how!r}; one of {BAD_INPUT}")
    return json.dumps(body).encode()
