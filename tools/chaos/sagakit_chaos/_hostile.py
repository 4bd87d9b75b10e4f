"""Hostile input that a participant must park without harm, built as a careless or malicious
client would send it; shared by the chaos run and the fault matrix (tests/faults).

- poison headers: an event whose header table is as large as the broker takes (a content
  header frame must fit ``frame_max``), so that any header added when parking or retrying
  it would make the republish too large for the broker;
- amplification: a start event just under the size limit whose events, each a little
  larger than the one before, would be over it;
- a conflicting duplicate: an event id seen before, with another body;
- a stranger's backward event: a failure or compensation for a saga nobody started.

Bodies are written as JSON by hand where the models would refuse them: what is built here
is what arrives from outside, not what sagakit would send.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from order_contracts import OrderCreated
from order_contracts.samples import Scenario, sample_order
from pamqp import commands
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from sagakit import Envelope, SagaContext, SagaSpec, StepOutcome, derived_event_id
from sagakit.client import SagaClient

from ._faults import (
    Fault,
    FaultKind,
    Injector,
    Malformed,
    bound_participants,
    until_confirmed,
)
from ._ledger import Ledger, Seen
from ._orders import SKUS, PlannedOrder, plan_order

# RabbitMQ's default frame_max, which clients accept: no frame may be larger.
FRAME_MAX = 131_072
# The services' default max_message_bytes.
MAX_MESSAGE_BYTES = 256 * 1024
# "262 KB" (issue #12): under the limit by 144 bytes; one step record more is over it.
AMPLIFIED_BYTES = 262_000
CONFLICTING_DUPLICATE = "conflicting_duplicate"
UNKNOWN_SAGA = "unknown_saga"

_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Hostile:
    """One message to publish as is, who must park it and for which reasons.

    ``reasons`` are substrings one of which the parking reason must contain (any reason
    when empty); ``parked_by`` the participants that must park it (none: it must not be).
    """

    message_id: str
    routing_key: str
    body: bytes
    shape: str
    parked_by: frozenset[str]
    reasons: tuple[str, ...] = ()
    saga_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)

    def expected(self) -> Malformed:
        """What the audit expects of it."""
        return Malformed(
            message_id=self.message_id,
            routing_key=self.routing_key,
            shape=self.shape,
            parked_by=self.parked_by,
            reasons=self.reasons,
        )

    async def publish(self, client: SagaClient) -> None:
        """Publish it to the flow's exchange, persistent and confirmed."""
        await client.publish_raw(
            self.body,
            self.routing_key,
            headers=self.headers,
            message_id=self.message_id,
            correlation_id=self.saga_id,
            type=self.routing_key,
            content_type=_CONTENT_TYPE,
        )


# -- poison headers ----------------------------------------------------------------------


def padding_headers(count: int) -> dict[str, str]:
    """``count`` small headers (``x-pad-00001: v`` …)."""
    return {f"x-pad-{number:05d}": "v" for number in range(1, count + 1)}


def header_frame_bytes(headers: Mapping[str, Any], *, body_size: int = 1000) -> int:
    """The size of the content header frame that carries ``headers`` and the properties a
    client sets on an event."""
    properties = commands.Basic.Properties(
        content_type=_CONTENT_TYPE,
        delivery_mode=2,
        headers=dict(headers),
        message_id=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        message_type="inventory.reservation_failed",
        timestamp=datetime.now(UTC).replace(microsecond=0),
    )
    content = amqp_header.ContentHeader(0, body_size, properties)
    return len(amqp_frame.marshal(content, 1))


def max_padding_headers(
    *, frame_max: int = FRAME_MAX, base: Mapping[str, Any] | None = None, margin: int = 64
) -> int:
    """The most padding headers (besides ``base``) a published event can carry: its content
    header frame ends ``margin`` bytes under ``frame_max``. About 8,000 at RabbitMQ's
    default."""
    low, high = 0, frame_max // 8
    while low < high:
        middle = (low + high + 1) // 2
        headers = {**(base or {}), **padding_headers(middle)}
        if header_frame_bytes(headers) <= frame_max - margin:
            low = middle
        else:
            high = middle - 1
    return low


def poison_start(
    client: SagaClient, order: OrderCreated, *, spec: SagaSpec, frame_max: int = FRAME_MAX
) -> Hostile:
    """A start event with the largest header table the broker takes and an invalid saga id:
    every consumer of the start event must park it, and stay connected."""
    envelope = client.new_saga(order)
    data = json.loads(envelope.encode())
    invalid = f"not-a-saga-{uuid.uuid4().hex[:8]}"
    data["context"]["saga_id"] = invalid
    base = {"x-saga-id": invalid}
    headers = {**base, **padding_headers(max_padding_headers(frame_max=frame_max, base=base))}
    return Hostile(
        message_id=str(envelope.event_id),
        routing_key=spec.start_event,
        body=json.dumps(data).encode(),
        shape=f"{len(headers)} headers, invalid saga id",
        parked_by=bound_participants(spec)[spec.start_event],
        reasons=("saga_id",),  # whatever the words, the reason names what is wrong
        saga_id=invalid,
        headers=headers,
    )


def crowded_headers(frame_max: int = FRAME_MAX) -> dict[str, str]:
    """As many headers as a valid event can carry beside the saga id and a trace context."""
    base = {"x-saga-id": str(uuid.uuid4()), "traceparent": "00-" + "0" * 32 + "-" + "0" * 16}
    return padding_headers(max_padding_headers(frame_max=frame_max, base=base))


# -- amplification -----------------------------------------------------------------------


def amplified_start(
    client: SagaClient,
    order: OrderCreated,
    *,
    spec: SagaSpec,
    size: int = AMPLIFIED_BYTES,
) -> Hostile:
    """A start event of exactly ``size`` bytes, padded in ``context.steps[0].reason``.

    Its first step's event would carry that context and one step record more: over the
    limit. A start event must arrive with no steps at all, so its first consumer must park
    it, take nothing and emit nothing.
    """
    envelope = client.new_saga(order)
    first = spec.steps[0]
    data = json.loads(envelope.encode())
    record = {
        "step": first.name,
        "participant": first.participant,
        "outcome": StepOutcome.COMPLETED.value,
        "at": datetime.now(UTC).isoformat(),
        "reason": "",
    }
    data["context"]["steps"] = [record]
    unpadded = len(json.dumps(data).encode())
    if unpadded > size:
        raise ValueError(f"the start event is {unpadded} bytes before padding, over {size}")
    record["reason"] = "x" * (size - unpadded)
    body = json.dumps(data).encode()
    assert len(body) == size
    saga = str(envelope.context.saga_id)
    return Hostile(
        message_id=str(envelope.event_id),
        routing_key=spec.start_event,
        body=body,
        shape=f"start event of {size} bytes padded in context.steps[0].reason",
        parked_by=bound_participants(spec)[spec.start_event],
        saga_id=saga,
        headers=envelope.amqp_headers(),
    )


def largest_order(order_id: str) -> OrderCreated:
    """A valid order, fulfilled by the reference rules, about as large as the schema allows
    (a hundred lines, every text field at its longest): about 6 KB of JSON."""
    base = sample_order(Scenario.FULFILLED)
    lines = [
        {"sku": SKUS[number % len(SKUS)], "quantity": 1, "unit_price": "1.50"}
        for number in range(100)
    ]
    data = base.model_dump(mode="json")
    data.update(
        order_id=order_id[:100],
        items=lines,
        customer={"id": "c" * 100, "email": "a" * 240 + "@example.com"},
        shipping_address={
            "name": "N" * 200,
            "line1": "L" * 200,
            "city": "C" * 100,
            "postal_code": "P" * 20,
            "country": "DE",
        },
    )
    order = OrderCreated.model_validate(data)
    assert order.total() < Decimal("5000.00")  # the payment limit
    return order


# -- conflicting duplicates --------------------------------------------------------------


def conflicting_copy(seen: Seen, *, spec: SagaSpec) -> Hostile:
    """``seen`` again under its own id, with one more unit on its order's first line."""
    data = json.loads(seen.body)
    payload = data["payload"]
    order = payload if seen.event_type == spec.start_event else payload[spec.start_field or "order"]
    line = order["items"][0]
    line["quantity"] = line["quantity"] + 1 if line["quantity"] < 10_000 else 1
    return Hostile(
        message_id=seen.message_id,
        routing_key=seen.routing_key,
        body=json.dumps(data).encode(),
        shape=f"{seen.routing_key} again with another body",
        parked_by=bound_participants(spec).get(seen.routing_key, frozenset()),
        reasons=(CONFLICTING_DUPLICATE,),
        saga_id=seen.saga_id,
        headers=dict(seen.headers),
    )


# -- strangers ---------------------------------------------------------------------------


def backward_events(spec: SagaSpec) -> list[str]:
    """Every event that makes a participant undo its step (failures and compensations)."""
    return sorted({event for step in spec.steps for event in step.compensate_on})


def stranger_backward(spec: SagaSpec, event_type: str) -> Hostile:
    """``event_type`` (a failure or a compensation) for a saga nobody started, as its
    rightful producer would announce it, history and all."""
    producer_step = next(
        step for step in spec.steps if event_type in (step.failure, step.compensated)
    )
    failed = event_type == producer_step.failure
    now = datetime.now(UTC)
    records: list[dict[str, Any]] = []
    for step in spec.steps:
        if step is producer_step:
            break
        records.append(
            {
                "step": step.name,
                "participant": step.participant,
                "outcome": "completed",
                "at": now.isoformat(),
            }
        )
    records.append(
        {
            "step": producer_step.name,
            "participant": producer_step.participant,
            "outcome": "failed" if failed else "compensated",
            "at": now.isoformat(),
            "reason": "card_declined" if failed else None,
        }
    )
    context = SagaContext.model_validate(
        {
            "saga_id": str(uuid.uuid4()),
            "saga_type": spec.saga_type,
            "causation_id": str(uuid.uuid4()),
            "steps": records,
        }
    )
    order = sample_order(Scenario.FULFILLED).model_dump(mode="json")
    fields: dict[str, Any] = {spec.start_field or "order": order}
    if failed:
        fields.update(reason="card_declined", detail="")
    payload = spec.model_for(event_type).model_validate(fields)
    producer = producer_step.participant
    envelope = Envelope.new(
        payload,
        context=context,
        producer=producer,
        event_id=derived_event_id(context.saga_id, producer, event_type),
    )
    return Hostile(
        message_id=str(envelope.event_id),
        routing_key=event_type,
        body=envelope.encode(),
        shape=f"{event_type} for a saga nobody started",
        parked_by=bound_participants(spec)[event_type],
        reasons=(UNKNOWN_SAGA,),
        saga_id=str(context.saga_id),
        headers=envelope.amqp_headers(),
    )


# -- as chaos faults ---------------------------------------------------------------------


class InputFaults:
    """Carries out the hostile-input kinds of a chaos run, for an ``Injector``.

    Every message sent is registered in ``injector.malformed`` with who must park it and
    why; valid orders sent along (one with a crowded header table) go to ``planned``, for
    the audit to follow like any other saga.
    """

    def __init__(
        self,
        injector: Injector,
        *,
        client: SagaClient,
        ledger: Ledger,
        spec: SagaSpec,
        rng: random.Random,
        frame_max: int = FRAME_MAX,
    ) -> None:
        self.injector = injector
        self.client = client
        self.ledger = ledger
        self.spec = spec
        self.rng = rng
        self.frame_max = frame_max
        self.planned: dict[str, PlannedOrder] = {}
        self._orders = 0

    def handlers(self) -> dict[FaultKind, Callable[[Fault], Awaitable[None]]]:
        """What to hand the injector."""
        return {
            FaultKind.POISON_HEADERS: self._poison,
            FaultKind.AMPLIFICATION: self._amplify,
            FaultKind.CONFLICTING_DUPLICATE: self._conflict,
            FaultKind.STRANGER: self._stranger,
        }

    def _order(self) -> PlannedOrder:
        self._orders += 1
        return plan_order(self.rng, 900_000 + self._orders)

    def _valid_order(self) -> OrderCreated:
        # One the rules would fulfil: whatever stops it, it is not a business failure.
        self._orders += 1
        return sample_order(Scenario.FULFILLED, order_id=f"chaos-{900_000 + self._orders}")

    async def _send(self, kind: FaultKind, hostile: Hostile) -> None:
        self.injector.malformed[hostile.message_id] = hostile.expected()
        await until_confirmed(functools.partial(hostile.publish, self.client))
        self.injector.note(kind, hostile.shape)

    async def _poison(self, fault: Fault) -> None:
        poison = poison_start(
            self.client, self._valid_order(), spec=self.spec, frame_max=self.frame_max
        )
        await self._send(FaultKind.POISON_HEADERS, poison)
        # And a valid order with as many headers: it must go through like any other.
        crowded = self._order()
        envelope = self.client.new_saga(crowded.order)
        self.planned[str(envelope.context.saga_id)] = crowded
        self.injector.started_by_faults += 1
        headers = {**envelope.amqp_headers(), **crowded_headers(self.frame_max)}
        await until_confirmed(
            functools.partial(
                self.client.publish_raw,
                envelope.encode(),
                envelope.event_type,
                headers=headers,
                message_id=str(envelope.event_id),
                correlation_id=str(envelope.context.saga_id),
                type=envelope.event_type,
                content_type=_CONTENT_TYPE,
            )
        )

    async def _amplify(self, fault: Fault) -> None:
        hostile = amplified_start(self.client, self._valid_order(), spec=self.spec)
        await self._send(FaultKind.AMPLIFICATION, hostile)

    async def _conflict(self, fault: Fault) -> None:
        candidates = await self._settled_events()
        for seen in self.rng.sample(candidates, k=min(fault.count, len(candidates))):
            copy = conflicting_copy(seen, spec=self.spec)
            await self._send(FaultKind.CONFLICTING_DUPLICATE, copy)

    async def _settled_events(self, *, within: float = 60.0) -> list[Seen]:
        """Events whose consumer is known to have taken the original: those of sagas that
        moved on past them (ended), that some participant consumes. Early in a run there
        may be none yet: wait for some."""
        bound = bound_participants(self.spec)
        terminal = self.spec.terminal_events()
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + within
        while True:
            candidates = [
                seen
                for seen in self.ledger.seen_events()
                if seen.saga_id in self.ledger.ended
                and seen.event_type in bound
                and seen.event_type not in terminal
                and seen.message_id not in self.injector.malformed
            ]
            if candidates or loop.time() > give_up_at:
                return candidates
            await asyncio.sleep(0.5)

    async def _stranger(self, fault: Fault) -> None:
        events = backward_events(self.spec)
        for _ in range(fault.count):
            hostile = stranger_backward(self.spec, self.rng.choice(events))
            await self._send(FaultKind.STRANGER, hostile)
