"""Broker-level pieces: addresses, the failover connection, the names and declarations of what a
participant owns, header tables that can always be sent again.
"""

from sagakit.broker._failover import FailoverConnection, rabbit_broker
from sagakit.broker._topology import (
    ATTEMPT_HEADER,
    CANCELLED_BY_OPERATOR,
    DEATH_HEADER,
    DELIVERY_LIMIT,
    FIRST_FAILURE_HEADER,
    HEADERS_DROPPED_HEADER,
    LAST_ERROR_HEADER,
    OPERATOR_CANCEL_HEADER,
    ORIGIN_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REASON_HEADER,
    REPLAYS_HEADER,
    ParticipantTopology,
    dead_letter_exchange_name,
    dead_letter_queue_name,
    flow_exchange,
    queue_name,
    retry_exchange_name,
    retry_queue_name,
)
from sagakit.broker._urls import BrokerHost, broker_hosts, broker_urls, redacted
from sagakit.broker._vhosts import ThrowawayVhost, throwaway_vhost, vhost_of, with_vhost

__all__ = [
    "ATTEMPT_HEADER",
    "BrokerHost",
    "CANCELLED_BY_OPERATOR",
    "DEATH_HEADER",
    "DELIVERY_LIMIT",
    "FIRST_FAILURE_HEADER",
    "FailoverConnection",
    "HEADERS_DROPPED_HEADER",
    "LAST_ERROR_HEADER",
    "OPERATOR_CANCEL_HEADER",
    "ORIGIN_QUEUE_HEADER",
    "PARKED_AT_HEADER",
    "ParticipantTopology",
    "REASON_HEADER",
    "REPLAYS_HEADER",
    "ThrowawayVhost",
    "broker_hosts",
    "broker_urls",
    "dead_letter_exchange_name",
    "dead_letter_queue_name",
    "flow_exchange",
    "queue_name",
    "rabbit_broker",
    "redacted",
    "retry_exchange_name",
    "retry_queue_name",
    "throwaway_vhost",
    "vhost_of",
    "with_vhost",
]
