"""Which saga and event type a raw message belongs to, before (or without) validating it.

The envelope is the truth: ``context.saga_id`` and ``event_type`` in the JSON body. A
plain AMQP client may leave ``correlation_id`` unset or use it for something else, and
FastStream makes one up when it is missing, so the correlation id is only the last resort,
and only as it was on the wire. What is read here ends up in log lines and on the
operator's screen, so a value must look like an identifier to be used at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from sagakit._envelope import SAGA_ID_HEADER

# Bodies larger than this are not parsed just to name their saga (they are parked as too
# large anyway); 4 MiB is more than any broker frame setting lets through in practice.
_PEEK_LIMIT_BYTES = 4 * 1024 * 1024

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,99}")


class MessageIdentity(NamedTuple):
    """The saga id and event type a message claims, ``None`` where it names none."""

    saga_id: str | None
    event_type: str | None


def peek_envelope(body: bytes | bytearray | memoryview | str) -> Mapping[str, Any] | None:
    """The body as a JSON object, or ``None`` when it is not one (or too large to look at)."""
    if len(body) > _PEEK_LIMIT_BYTES:
        return None
    try:
        document = json.loads(bytes(body) if isinstance(body, memoryview) else body)
    except (ValueError, RecursionError, TypeError):
        return None
    return document if isinstance(document, dict) else None


def _identifier(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
        return value
    return None


def identify(
    *,
    body: bytes | bytearray | memoryview | str | None,
    headers: Mapping[str, Any] | None,
    correlation_id: Any = None,
    message_type: Any = None,
    envelope: Mapping[str, Any] | None = None,
) -> MessageIdentity:
    """The saga id and event type of a raw message.

    Args:
        body: The message body (parsed here unless ``envelope`` is given).
        headers: The message headers.
        correlation_id: The AMQP correlation id as it was on the wire (not one a client
            library made up).
        message_type: The AMQP ``type`` property.
        envelope: The body already parsed, to avoid parsing it again.
    """
    if envelope is None and body is not None:
        envelope = peek_envelope(body)
    saga_id = event_type = None
    if envelope is not None:
        context = envelope.get("context")
        if isinstance(context, Mapping):
            saga_id = _identifier(context.get("saga_id"))
        event_type = _identifier(envelope.get("event_type"))
    if saga_id is None:
        saga_id = _identifier((headers or {}).get(SAGA_ID_HEADER)) or _identifier(correlation_id)
    if event_type is None:
        event_type = _identifier(message_type)
    return MessageIdentity(saga_id, event_type)
