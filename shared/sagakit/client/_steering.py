"""Steering a stalled saga by hand: cancel it, or re-drive it.

Both send a participant, again, the event its step is waiting for, straight to the
participant's work queue (through its retries exchange, as a dead-letter replay does),
byte for byte as the tracker saw it go by:

- **re-drive**: a plain copy. A participant that never got the event (it was lost, or sits
  in a dead-letter queue) does the step now; one that did the step already takes the copy
  as a duplicate (same event id, same body), and publishes what it had not sent yet.
- **cancel**: a copy marked ``x-saga-operator-cancel``. The participant fails its step with
  the reason ``cancelled_by_operator`` instead of running it, and the saga's backward path
  runs as for any failure. The failure is the participant's own: it records the step as
  failed, so that the original event, arriving later, is a duplicate and never resurrects
  the saga, and every rule of the runtime (compensate only what was done, in reverse order;
  ``unknown_saga``) holds. A failure event published on a participant's behalf could not
  promise that: the participant itself would still run the step when its event came.

Whichever copy the participant takes first decides; the others are duplicates. So both
actions are idempotent, and a cancel that comes after the step was done changes nothing
(the saga moved on; cancel again where it waits now). Sagas that have ended are refused, so
is a cancel of a saga that is already being undone (re-drive it instead).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import aio_pika
from aio_pika.exceptions import DeliveryError, PublishError
from prometheus_client import Counter

from sagakit._envelope import CONTENT_TYPE
from sagakit._exceptions import SagaError, SteeringRefused
from sagakit.broker._topology import (
    CANCELLED_BY_OPERATOR,
    OPERATOR_CANCEL_HEADER,
    queue_name,
    retry_exchange_name,
)
from sagakit.client._client import connect
from sagakit.spec._spec import SagaSpec
from sagakit.tracker._model import SagaState, SagaView, TrackedEvent, summarize
from sagakit.tracker._store import TrackerStore

logger = logging.getLogger("sagakit.operator")

OPERATOR_ACTIONS = Counter(
    "sagakit_operator_actions_total",
    "Operator actions on sagas (cancel, redrive), by outcome (sent, refused, failed).",
    ["action", "outcome"],
)

OPERATOR_HEADER = "x-saga-operator"


class Action(StrEnum):
    """What an operator does to a saga."""

    CANCEL = "cancel"
    REDRIVE = "redrive"


@dataclass(frozen=True, slots=True)
class SteeringPlan:
    """What an action sends: ``event`` again, to ``participant``'s ``queue``, for ``step``."""

    action: Action
    saga_id: str
    step: str
    participant: str
    event: TrackedEvent
    queue: str
    backward: bool


def plan_steering(
    spec: SagaSpec, action: Action, saga_id: str, events: Sequence[TrackedEvent]
) -> tuple[SteeringPlan, SagaView]:
    """What ``action`` would send for the saga with ``events``.

    Raises:
        SteeringRefused: the tracker never saw the saga, it has ended, it waits on no step,
            the tracker has not seen the event the step waits for (a cancel of a saga being
            undone is refused too).
    """
    if not events:
        raise SteeringRefused(saga_id, "the tracker has never seen this saga")
    view = summarize(spec, events)
    if view.state.ended:
        raise SteeringRefused(saga_id, f"it has ended ({view.state.value})")
    backward = view.state is SagaState.COMPENSATING
    if action is Action.CANCEL and backward:
        raise SteeringRefused(
            saga_id, "it is being undone already; re-drive it if its compensation stalled"
        )
    if view.current_step is None:
        raise SteeringRefused(saga_id, "it waits on no step")
    step = spec.step(view.current_step)
    wanted = set(step.compensate_on) if backward else {step.trigger}
    taken = [event for event in events if event.event_type in wanted and event.body]
    if not taken:
        raise SteeringRefused(
            saga_id,
            f"the tracker has not seen the event {step.name!r} waits for "
            f"({', '.join(sorted(wanted))})",
        )
    event = taken[-1]
    return (
        SteeringPlan(
            action=action,
            saga_id=view.saga_id,
            step=step.name,
            participant=step.participant,
            event=event,
            queue=queue_name(step.participant, event.event_type),
            backward=backward,
        ),
        view,
    )


async def steer(
    store: TrackerStore,
    url: str | Sequence[str],
    saga_id: str,
    action: Action,
    *,
    operator: str = "cli",
) -> SteeringPlan:
    """Cancel or re-drive one saga, as the tracker in ``store`` knows it, on the broker at
    ``url``; returns what was sent. Logged, and counted in ``sagakit_operator_actions_total``.

    Raises:
        SteeringRefused: the action does not apply (nothing is sent).
        BrokerUnavailable: no broker answered.
        SagaError: the participant's queue did not take the message.
    """
    try:
        chosen, _ = plan_steering(store.spec, action, saga_id, await store.events(saga_id))
    except SteeringRefused as refused:
        OPERATOR_ACTIONS.labels(action.value, "refused").inc()
        logger.warning(
            "operator %s refused: %s",
            action.value,
            refused.why,
            extra={"saga_id": saga_id, "operator": operator},
        )
        raise
    try:
        await _send(url, chosen)
    except Exception:
        OPERATOR_ACTIONS.labels(action.value, "failed").inc()
        logger.exception(
            "operator %s of %s could not be sent",
            action.value,
            chosen.step,
            extra={"saga_id": saga_id, "operator": operator},
        )
        raise
    OPERATOR_ACTIONS.labels(action.value, "sent").inc()
    logger.warning(
        "operator %s: %s sent to %s again for step %s",
        action.value,
        chosen.event.event_type,
        chosen.queue,
        chosen.step,
        extra={"saga_id": chosen.saga_id, "operator": operator, "step": chosen.step},
    )
    return chosen


async def _send(url: str | Sequence[str], chosen: SteeringPlan) -> None:
    event = chosen.event
    assert event.body is not None
    headers: dict[str, str] = {
        key: value for key, value in event.headers.items() if not key.startswith("x-death")
    }
    headers[OPERATOR_HEADER] = chosen.action.value
    if chosen.action is Action.CANCEL:
        headers[OPERATOR_CANCEL_HEADER] = CANCELLED_BY_OPERATOR
    message = aio_pika.Message(
        event.body,
        content_type=CONTENT_TYPE,
        message_id=event.event_id,
        correlation_id=event.saga_id,
        type=event.event_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=dict(headers),
    )
    connection = await connect(url, connect_timeout=5, robust=False)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(retry_exchange_name(chosen.participant), ensure=True)
        try:
            await exchange.publish(message, routing_key=chosen.queue, mandatory=True)
        except (PublishError, DeliveryError) as exc:
            raise SagaError(f"{chosen.queue} did not take the event: {exc}") from exc
    except aio_pika.exceptions.ChannelClosed as exc:
        raise SagaError(
            f"{chosen.participant} has no retries exchange on this broker: {exc}"
        ) from exc
    finally:
        await connection.close()
