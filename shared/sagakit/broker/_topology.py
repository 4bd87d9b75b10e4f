"""Names and declarations of everything a participant owns on the broker.

Per participant: one durable quorum queue per consumed event type, bound to the flow's topic
exchange with the event type as routing key; a delay queue beside each (a quorum queue too),
for retries; and a dead-letter exchange with its queue, where bad input and exhausted
compensations are parked.

Retries go through a direct exchange of the participant's own, never the default exchange:
a broker user allowed to write to the default exchange can put a message into any queue,
and every name a participant touches starts with ``<participant>.``, so that broker
permissions can be granted per participant (deploy/rabbitmq/definitions.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

# Broker-side safety net: a message that keeps killing its consumer before it can be acked
# is dead-lettered by RabbitMQ itself after this many deliveries, instead of looping.
DELIVERY_LIMIT = 20

ORIGIN_QUEUE_HEADER = "x-saga-origin-queue"
REASON_HEADER = "x-saga-dead-letter-reason"
FIRST_FAILURE_HEADER = "x-saga-first-failure-at"
PARKED_AT_HEADER = "x-saga-parked-at"
ATTEMPT_HEADER = "x-saga-attempt"
LAST_ERROR_HEADER = "x-saga-last-error"
# How often ``saga dlq replay`` sent a message back to its work queue.
REPLAYS_HEADER = "x-saga-replays"
# What a republish left out of a header table too large to send again (see _headers.py).
HEADERS_DROPPED_HEADER = "x-saga-headers-dropped"
# Written by the broker when it dead-letters a message: the history, newest first.
DEATH_HEADER = "x-death"
# On a copy of a step's trigger sent by an operator (``saga cancel``): the participant fails
# the step with this header's value as the reason instead of running it (_runtime.py).
OPERATOR_CANCEL_HEADER = "x-saga-operator-cancel"
CANCELLED_BY_OPERATOR = "cancelled_by_operator"

_RETRY_SUFFIX = ".retry"


def flow_exchange(name: str) -> RabbitExchange:
    """The durable topic exchange of a flow; routing key = event type."""
    return RabbitExchange(name, type=ExchangeType.TOPIC, durable=True)


def queue_name(participant: str, event_type: str) -> str:
    """The queue where ``participant`` consumes ``event_type``."""
    return f"{participant}.{event_type}"


def retry_queue_name(queue: str) -> str:
    """The delay queue that sends a message back to ``queue`` when its TTL expires."""
    return f"{queue}{_RETRY_SUFFIX}"


def is_retry_queue(queue: str) -> bool:
    """True for a delay queue (``<work queue>.retry``)."""
    return queue.endswith(_RETRY_SUFFIX)


def work_queue_of(queue: str) -> str:
    """The work queue behind ``queue``: itself, or the one a delay queue sends back to."""
    return queue.removesuffix(_RETRY_SUFFIX) if is_retry_queue(queue) else queue


def retry_exchange_name(participant: str) -> str:
    """The direct exchange that routes a participant's retries into, and out of, delay."""
    return f"{participant}.retries"


def dead_letter_exchange_name(participant: str) -> str:
    """The exchange where a participant parks messages it cannot process."""
    return f"{participant}.dlx"


def dead_letter_queue_name(participant: str) -> str:
    """The queue that holds a participant's parked messages."""
    return f"{participant}.dlq"


@dataclass(frozen=True, slots=True)
class ParticipantTopology:
    """Everything one participant declares, derived from its name and flow exchange."""

    participant: str
    exchange: str
    delivery_limit: int = DELIVERY_LIMIT

    def work_queue(self, event_type: str) -> RabbitQueue:
        """The quorum queue for one consumed event type."""
        return RabbitQueue(
            queue_name(self.participant, event_type),
            durable=True,
            queue_type=QueueType.QUORUM,
            routing_key=event_type,
            arguments=self._work_queue_arguments(),
        )

    def _work_queue_arguments(self) -> Any:
        return {
            "x-dead-letter-exchange": dead_letter_exchange_name(self.participant),
            "x-delivery-limit": self.delivery_limit,
        }

    def retry_queue(self, event_type: str) -> RabbitQueue:
        """The delay queue of one work queue: expired messages go back to the work queue.

        Bound to the retry exchange under its own name; the work queue is bound to the same
        exchange under the work queue's name, where expired messages are dead-lettered.

        A quorum queue, like the work queue (RabbitMQ 3.10 expires their messages by
        per-message TTL): on a cluster, a retry waiting in it outlives the loss of a node,
        and a service that reconnects to another node can declare it again, which a
        classic queue whose node is down refuses. Expired messages are dead-lettered
        at-least-once, so none is dropped when the work queue cannot take it at that moment.
        """
        work = queue_name(self.participant, event_type)
        return RabbitQueue(
            retry_queue_name(work),
            durable=True,
            queue_type=QueueType.QUORUM,
            arguments={
                "x-dead-letter-exchange": retry_exchange_name(self.participant),
                "x-dead-letter-routing-key": work,
                "x-dead-letter-strategy": "at-least-once",
                # at-least-once dead-lettering requires it: a full queue refuses publishes.
                "x-overflow": "reject-publish",
            },
        )

    def retry_exchange(self) -> RabbitExchange:
        """The direct exchange of the participant's retries."""
        return RabbitExchange(
            retry_exchange_name(self.participant), type=ExchangeType.DIRECT, durable=True
        )

    def dead_letter_exchange(self) -> RabbitExchange:
        """A fanout exchange: everything parked lands in the one dead-letter queue."""
        return RabbitExchange(
            dead_letter_exchange_name(self.participant), type=ExchangeType.FANOUT, durable=True
        )

    def dead_letter_queue(self) -> RabbitQueue:
        """The durable quorum queue of parked messages."""
        return RabbitQueue(
            dead_letter_queue_name(self.participant), durable=True, queue_type=QueueType.QUORUM
        )
