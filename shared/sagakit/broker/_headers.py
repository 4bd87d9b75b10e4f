"""Header tables that sagakit can always send again, whatever a message arrived with.

A message may arrive with a header table as large as the broker accepts from its publisher:
the content header (properties and headers) must fit in one frame, ``frame_max`` (128 KiB
by default). Retrying or parking it publishes it again with sagakit's headers added; sent as
is, that content header is larger than the frame limit, and the broker closes the whole
connection (``frame_too_large``), every consumer of the service with it, and the message
comes back to do it again. So a republish copies the headers sagakit reads first, then the
others in their order while they fit, and says what it left out.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pamqp import encode
from pamqp.commands import Basic
from pamqp.constants import FRAME_MAX_SIZE
from pamqp.header import ContentHeader

from sagakit.broker._topology import HEADERS_DROPPED_HEADER

# A frame: type (1), channel (2), size (4), frame end (1).
_FRAME_OVERHEAD = 8
# aiormq gives a publish without a message id one of 32 hex digits.
_GENERATED_MESSAGE_ID_BYTES = 33
# Room left for what others add after sagakit publishes: the trace context the aio-pika
# instrumentation injects, and ``x-death`` / ``x-first-death-*`` when the broker
# dead-letters the message (a delay queue's expiry, the delivery limit).
HEADROOM_BYTES = 4096
# A header sagakit reads (trace context, saga id, death history) is kept only up to this
# size: a client can send any of them, at any size.
_MAX_KEPT_HEADER_BYTES = 8192
# Room for the note of what was left out.
_NOTE_BYTES = 640
_NOTE_MAX_CHARS = 400
_NOTE_EXAMPLES = 5

DEFAULT_FRAME_MAX = FRAME_MAX_SIZE
"""RabbitMQ's default ``frame_max`` (131072), used when the negotiated one is unknown."""


def republishable(value: Any) -> Any:
    """``value`` (a header value) as the AMQP client can encode it again.

    The client decodes more than it encodes: a long string that is not UTF-8 arrives as
    bytes, a 64-bit float (as Java or .NET clients send) as a float it packs in 32 bits.
    Sent back as is, either fails the publish and leaves the message unacknowledged.
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, float):
        try:
            struct.pack(">f", value)
        except OverflowError:
            return repr(value)
        return value
    if isinstance(value, dict):
        return {str(key): republishable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [republishable(item) for item in value]
    return value


def _encoded_size(key: str, value: Any) -> int | None:
    """Bytes of one table entry, or None when the client cannot encode it."""
    try:
        return len(encode.short_string(key)) + len(encode.encode_table_value(value))
    except Exception:  # TypeError, ValueError, struct.error, RecursionError: not sendable
        return None


@dataclass(slots=True)
class BoundedHeaders:
    """The headers to send, and what was left out of the original table."""

    headers: dict[str, Any] = field(default_factory=dict)
    original_count: int = 0
    dropped: list[str] = field(default_factory=list)
    dropped_bytes: int = 0

    @property
    def note(self) -> str | None:
        """A short description of what was dropped, or None when nothing was."""
        if not self.dropped:
            return None
        examples = ", ".join(ascii(name[:40])[1:-1] for name in self.dropped[:_NOTE_EXAMPLES])
        more = ", ..." if len(self.dropped) > _NOTE_EXAMPLES else ""
        note = (
            f"{len(self.dropped)} of {self.original_count} headers dropped "
            f"({self.dropped_bytes} bytes) to fit the broker's frame limit: {examples}{more}"
        )
        return note[:_NOTE_MAX_CHARS]

    @property
    def reason(self) -> str | None:
        """``headers_too_large: N headers dropped``, for a dead-letter reason."""
        if not self.dropped:
            return None
        return f"headers_too_large: {len(self.dropped)} headers dropped"


def bounded_headers(
    original: Mapping[str, Any],
    added: Mapping[str, Any],
    *,
    budget: int,
    keep_first: Iterable[str] = (),
    leave_out: Collection[str] = (),
) -> BoundedHeaders:
    """A header table of at most ``budget`` encoded bytes: ``added``, then what fits.

    Args:
        original: The headers the message arrived with.
        added: sagakit's own headers (small by construction); always kept, and they win
            over an original header of the same name.
        budget: The most bytes the encoded table may take.
        keep_first: Original headers to copy before the others (those sagakit reads).
        leave_out: Original headers not to copy at all.
    """
    result = BoundedHeaders(original_count=len(original))
    used = 4 + _NOTE_BYTES  # the table's length prefix, and room for the note
    for key, value in added.items():
        value = republishable(value)
        result.headers[key] = value
        used += _encoded_size(key, value) or 0
    # An earlier note is kept, unless this republish drops headers and writes its own.
    skip = set(added) | set(leave_out)
    first = [key for key in dict.fromkeys(keep_first) if key in original and key not in skip]
    rest = [key for key in original if key not in skip and key not in first]
    for key in (*first, *rest):
        try:
            value = republishable(original[key])
        except RecursionError:
            value = None
            size = None
        else:
            size = _encoded_size(str(key), value)
        limit = _MAX_KEPT_HEADER_BYTES if key in first else budget
        if size is not None and size <= limit and used + size <= budget:
            result.headers[str(key)] = value
            used += size
        else:
            result.dropped.append(str(key))
            result.dropped_bytes += size if size is not None else 0
    note = result.note
    if note is not None:
        result.headers[HEADERS_DROPPED_HEADER] = note
    return result


def header_budget(properties: Basic.Properties, *, body_size: int, frame_max: int | None) -> int:
    """How many bytes a header table may take beside the other ``properties`` in one frame.

    Args:
        properties: The message's properties (its headers are not counted).
        body_size: The body's length.
        frame_max: The connection's negotiated frame size (the broker's default if unknown).
    """
    without_headers = copy.copy(properties)
    without_headers.headers = None
    size = len(ContentHeader(0, body_size, without_headers).marshal())
    if not properties.message_id:
        size += _GENERATED_MESSAGE_ID_BYTES
    return (frame_max or DEFAULT_FRAME_MAX) - _FRAME_OVERHEAD - size - HEADROOM_BYTES


def frame_max_of(connection: Any) -> int | None:
    """The negotiated ``frame_max`` of an aio-pika connection, when it is connected."""
    transport = getattr(connection, "transport", None)
    tune = getattr(getattr(transport, "connection", None), "connection_tune", None)
    value = getattr(tune, "frame_max", None)
    return value if isinstance(value, int) and value > 0 else None
