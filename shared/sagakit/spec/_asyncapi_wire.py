"""The parts of the wire contract FastStream does not document, added to its AsyncAPI output.

FastStream describes channels, operations and payloads. Everything else a client of another
language needs is added here, derived from the same names and declarations the runtime
uses (``_topology``, ``_envelope``): the application headers, what the AMQP properties
carry (correlation id = saga id, message id = event id), the queues' arguments and
bindings, the delay queues retries wait in, the dead-letter queue bad input is parked in,
and how a service logs in to the broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from faststream.rabbit import RabbitExchange, RabbitQueue

from sagakit._envelope import CONTENT_TYPE, SAGA_ID_HEADER
from sagakit.broker import _topology as topology

AMQP_BINDING_VERSION = "0.3.0"
ROLE = "x-saga-role"
"""An operation's part in the flow: ``event`` (an event of the flow consumed or emitted),
``retry`` (a delay queue) or ``dead-letter`` (parking)."""
EVENT_ROLE = "event"
RETRY_ROLE = "retry"
DEAD_LETTER_ROLE = "dead-letter"

EVENT_HEADERS = "SagaHeaders"
RETRY_HEADERS = "RetryHeaders"
DEAD_LETTER_HEADERS = "DeadLetterHeaders"
PARKED_BODY = "ParkedBody"
USER_PASSWORD = "userPassword"
CERTIFICATE = "certificate"

PERSISTENT = 2

CORRELATION_ID: dict[str, Any] = {
    "location": f"$message.header#/{SAGA_ID_HEADER}",
    "description": (
        "The saga id. Every event carries it three times, always equal: the "
        f"`{SAGA_ID_HEADER}` header (this location), the AMQP `correlation_id` property "
        "and `context.saga_id` in the body, which is authoritative. The AMQP `message_id` "
        "property is the event id (`event_id` in the body): consumers drop a message whose "
        "id they have already handled."
    ),
}

_TRACE_HEADERS: dict[str, Any] = {
    "traceparent": {
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": (
            "W3C Trace Context: the trace and the span that published the event. Without "
            "it, consumers join the trace whose id is the saga id's 32 hex digits."
        ),
    },
    "tracestate": {"type": "string", "description": "W3C Trace Context, when the sender has it."},
    "baggage": {"type": "string", "description": "W3C Baggage, when the sender has it."},
}

_SAGA_ID_HEADER_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "uuid",
    "description": "The saga id: equal to `context.saga_id` and the `correlation_id` property.",
}

# Headers sagakit adds when it moves a message aside; keyed by the names the runtime writes.
_RETRY_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    topology.ATTEMPT_HEADER: {
        "type": "integer",
        "minimum": 1,
        "description": "Which retry this is (1 for the first).",
    },
    topology.LAST_ERROR_HEADER: {
        "type": "string",
        "maxLength": 300,
        "description": "The transient error that made the handler give up this attempt.",
    },
    topology.FIRST_FAILURE_HEADER: {
        "type": "string",
        "format": "date-time",
        "description": "When handling this message first failed (RFC 3339, UTC).",
    },
}
_PARKING_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    topology.REASON_HEADER: {
        "type": "string",
        "maxLength": 1000,
        "description": (
            "Why the message was parked: a reason code, then details (`too_large`, "
            "`undecodable`, `schema_invalid`, `unexpected_event_type`, "
            "`unsupported_schema_version`, `unknown_saga_type`, `compensation_failed`, …). "
            "Absent when the broker dead-lettered the message itself (see `x-death`)."
        ),
    },
    topology.ORIGIN_QUEUE_HEADER: {
        "type": "string",
        "description": "The work queue the message came from; `saga dlq replay` returns it there.",
    },
    topology.PARKED_AT_HEADER: {
        "type": "string",
        "format": "date-time",
        "description": "When the message was parked (RFC 3339, UTC).",
    },
}
# Headers a message may carry from an earlier trip through the dead-letter queue or from a
# republish whose header table had to be cut down to fit one frame.
_HISTORY_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "x-saga-replays": {
        "type": "integer",
        "minimum": 1,
        "description": "How often `saga dlq replay` sent this message back to its work queue.",
    },
    topology.OPERATOR_CANCEL_HEADER: {
        "type": "string",
        "enum": [topology.CANCELLED_BY_OPERATOR],
        "description": (
            "On an operator's copy of a step's trigger (`saga cancel`, the console): the "
            "participant fails the step with this reason instead of running it."
        ),
    },
    "x-saga-headers-dropped": {
        "type": "string",
        "description": (
            "What a retry or parking left out of a header table too large to send again."
        ),
    },
}
_BROKER_DEAD_LETTER_HEADERS: dict[str, Any] = {
    "x-death": {
        "type": "array",
        "description": (
            "Set by RabbitMQ when it dead-lettered the message itself: a work queue's "
            "delivery limit (`x-delivery-limit`) was reached because every delivery ended "
            "without an acknowledgement (a consumer that kept crashing)."
        ),
    },
    "x-first-death-reason": {
        "type": "string",
        "description": "Set by RabbitMQ: `delivery_limit` for a message that kept crashing.",
    },
    "x-first-death-queue": {
        "type": "string",
        "description": "Set by RabbitMQ: the work queue the message was dead-lettered from.",
    },
    "x-first-death-exchange": {
        "type": "string",
        "description": "Set by RabbitMQ: the exchange the message was first published to.",
    },
}

DOCUMENTED_HEADERS = frozenset(
    {
        SAGA_ID_HEADER,
        *_TRACE_HEADERS,
        *_RETRY_HEADER_SCHEMAS,
        *_PARKING_HEADER_SCHEMAS,
        *_HISTORY_HEADER_SCHEMAS,
        *_BROKER_DEAD_LETTER_HEADERS,
    }
)
"""Every application header the documents describe; a test checks the runtime's are here."""


def header_schemas() -> dict[str, dict[str, Any]]:
    """The headers schemas of events, of retried events and of parked messages."""
    event_headers = {SAGA_ID_HEADER: _SAGA_ID_HEADER_SCHEMA, **_TRACE_HEADERS}
    return {
        EVENT_HEADERS: {
            "type": "object",
            "description": (
                "Application headers of every event. Further headers are allowed and "
                "ignored; trace context is read from string values only."
            ),
            "required": [SAGA_ID_HEADER],
            "properties": event_headers,
        },
        RETRY_HEADERS: {
            "type": "object",
            "description": (
                "A retried event: its own headers, and what the retry adds. The message "
                "expires from the delay queue after a backoff that grows with the attempt "
                "(exponential, with jitter) and goes back to its work queue."
            ),
            "required": [SAGA_ID_HEADER, *_RETRY_HEADER_SCHEMAS],
            "properties": {
                **event_headers,
                **_RETRY_HEADER_SCHEMAS,
                **_HISTORY_HEADER_SCHEMAS,
            },
        },
        DEAD_LETTER_HEADERS: {
            "type": "object",
            "description": (
                "A parked message keeps every header it arrived with (the event's, when it "
                "was one) and gains the reason it was parked; a message parked after "
                "retries also keeps the retry headers."
            ),
            "properties": {
                **event_headers,
                **_PARKING_HEADER_SCHEMAS,
                **_RETRY_HEADER_SCHEMAS,
                **_HISTORY_HEADER_SCHEMAS,
                **_BROKER_DEAD_LETTER_HEADERS,
            },
        },
        PARKED_BODY: {
            "description": (
                "The parked message's body, byte for byte as it arrived: an envelope of "
                "the flow, or the bad input that could not be read as one."
            ),
        },
    }


def amqp_properties(event_type: str | None) -> dict[str, Any]:
    """What the AMQP basic properties of an event carry, as a JSON schema."""
    return {
        "type": "object",
        "required": ["message_id", "correlation_id", "type", "content_type", "delivery_mode"],
        "properties": _properties(event_type),
    }


def parked_properties() -> dict[str, Any]:
    """The AMQP properties of a parked message: the original's, where it had them."""
    return {
        "type": "object",
        "description": (
            "Copied from the parked message: `message_id`, `correlation_id`, `type` and "
            "`content_type` as it arrived (bad input may lack any of them); always persistent."
        ),
        "required": ["delivery_mode"],
        "properties": _properties(None),
    }


def _properties(event_type: str | None) -> dict[str, Any]:
    return {
        "message_id": {
            "type": "string",
            "format": "uuid",
            "description": (
                "The event id, the body's `event_id`: derived from saga, producer and "
                "event type, so the same event announced twice has the same id."
            ),
        },
        "correlation_id": {
            "type": "string",
            "format": "uuid",
            "description": "The saga id, the body's `context.saga_id`.",
        },
        "type": (
            {"const": event_type, "description": "The event type, also the routing key."}
            if event_type
            else {"type": "string", "description": "The event type, also the routing key."}
        ),
        "content_type": {"const": CONTENT_TYPE},
        "delivery_mode": {
            "const": PERSISTENT,
            "description": "Persistent: the message survives a broker restart.",
        },
        "app_id": {"type": "string", "description": "The producer, when it sets one."},
        "timestamp": {
            "type": "integer",
            "description": "`occurred_at` in seconds since the epoch, when set.",
        },
    }


def event_message_binding(event_type: str) -> dict[str, Any]:
    """The AMQP message binding of an event: its type, and what its properties carry."""
    return {
        "messageType": event_type,
        "bindingVersion": AMQP_BINDING_VERSION,
        "x-properties": amqp_properties(event_type),
    }


def queue_binding(
    queue: RabbitQueue, *, vhost: str, bound_to: Iterable[tuple[RabbitExchange, str]]
) -> dict[str, Any]:
    """The AMQP channel binding of ``queue``, with its arguments and exchange bindings."""
    return {
        "is": "queue",
        "queue": {
            "name": queue.name,
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "autoDelete": queue.auto_delete,
            "vhost": vhost,
        },
        "x-queue-arguments": dict(queue.arguments or {}),
        "x-queue-bindings": [
            {"exchange": exchange_binding(exchange, vhost=vhost), "routingKey": key}
            for exchange, key in bound_to
        ],
        "bindingVersion": AMQP_BINDING_VERSION,
    }


def exchange_binding(exchange: RabbitExchange, *, vhost: str) -> dict[str, Any]:
    """An exchange as the AMQP channel binding describes one."""
    return {
        "name": exchange.name,
        "type": exchange.type.value,
        "durable": exchange.durable,
        "autoDelete": exchange.auto_delete,
        "vhost": vhost,
    }


def component_ref(kind: str, name: str) -> dict[str, str]:
    """A reference to ``#/components/<kind>/<name>``."""
    # Percent-encoded as FastStream writes its own references (``Envelope%5BX%5D``).
    return {"$ref": f"#/components/{kind}/{quote(name, safe=':')}"}


def security_schemes(
    user: str, *, owns: str, publishes: Iterable[str], binds: Iterable[str]
) -> dict[str, Any]:
    """How ``user`` logs in, and what the broker lets it do (deploy/rabbitmq)."""
    published, bound = list(publishes), list(binds)
    rights = {
        "user": user,
        "owns": owns,
        "publishes": published,
        "binds": bound,
    }
    if published:
        may = (
            f"It may declare, write and read only the flow's exchange and the names it owns "
            f"(`{owns}`), never the default exchange; on the flow's exchange it may publish "
            f"only {_listed(published)} and bind only {_listed(bound)} (topic permissions)."
        )
    else:
        may = (
            f"It may declare and read only the flow's exchange and the names it owns "
            f"(`{owns}`) and write only its own names: it publishes no event. It may bind "
            f"{_listed(bound)} on the flow's exchange (topic permissions)."
        )
    return {
        USER_PASSWORD: {
            "type": "userPassword",
            "description": (
                f"AMQP PLAIN login as the broker user `{user}`, the service's own. {may} "
                "Outside local development the `guest` account is refused. Credentials "
                "come from the environment or a file (`*_FILE` variables); `amqps://` for TLS."
            ),
            "x-broker-permissions": rights,
        },
        CERTIFICATE: {
            "type": "X509",
            "description": (
                "TLS client certificate (`amqps://…?auth=EXTERNAL&certfile=…&keyfile=…`, "
                f"broker plugin `rabbitmq_auth_mechanism_ssl`) naming the user `{user}`, "
                "with the same rights."
            ),
        },
    }


def server_security() -> list[dict[str, str]]:
    """The server's security: either scheme will do."""
    return [
        component_ref("securitySchemes", USER_PASSWORD),
        component_ref("securitySchemes", CERTIFICATE),
    ]


def _listed(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) if names else "nothing"


def server_description(participant: str) -> str:
    """What the documented server is."""
    return (
        "RabbitMQ (AMQP 0-9-1). The host and virtual host are deployment, not contract: "
        f"{participant} connects wherever its `RABBITMQ_URL` says."
    )


def merge_missing(target: dict[str, Any], additions: Mapping[str, Any]) -> None:
    """Add ``additions`` to ``target``, refusing to overwrite what FastStream generated."""
    for key, value in additions.items():
        if key in target and target[key] != value:
            raise ValueError(f"{key!r} already documented differently")
        target[key] = value
