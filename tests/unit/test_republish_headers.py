"""A republished message's header table always fits the broker's frame limit."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from pamqp import encode
from pamqp.header import ContentHeader
from sagakit.broker._headers import (
    DEFAULT_FRAME_MAX,
    HEADROOM_BYTES,
    bounded_headers,
    header_budget,
    republishable,
)

ADDED = {
    "x-saga-dead-letter-reason": "schema_invalid: context.saga_id: Input should be a UUID",
    "x-saga-origin-queue": "inventory.order.created",
    "x-saga-parked-at": "2026-11-24T10:00:00+00:00",
}
KEPT = ("x-saga-id", "traceparent", "x-death")


def _payload(message: aio_pika.Message) -> int:
    """Bytes of the content header frame's payload, as the broker checks them."""
    return len(ContentHeader(0, message.body_size, message.properties).marshal())


def _republished(original: dict[str, Any], *, frame_max: int = DEFAULT_FRAME_MAX) -> Any:
    message = aio_pika.Message(
        b'{"event_type": "order.created"}',
        message_id="0b8f8e0e-6a8e-4a5e-9d7c-3f6b2f0a1c11",
        correlation_id="5f0c2a57-0d5e-4b8e-a1f2-7c9d3e4b6a01",
        type="order.created",
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    budget = header_budget(message.properties, body_size=message.body_size, frame_max=frame_max)
    bounded = bounded_headers(original, ADDED, budget=budget, keep_first=KEPT)
    message.headers = bounded.headers
    return message, bounded


def _largest_table(prefix: str = "h") -> dict[str, Any]:
    """Small headers up to the most one frame takes (about 10,000)."""
    headers: dict[str, Any] = {}
    used = 200
    number = 0
    while used < DEFAULT_FRAME_MAX - 8:
        key = f"{prefix}{number:05d}"
        headers[key] = "v"
        used += len(encode.short_string(key)) + 6
        number += 1
    return headers


def test_a_small_table_is_copied_whole() -> None:
    original = {"x-saga-id": "s", "traceparent": "00-abc-def-01", "custom": 7}
    message, bounded = _republished(original)
    assert bounded.dropped == []
    assert bounded.reason is None
    assert message.headers == {**ADDED, **original}


def test_thousands_of_small_headers_are_cut_to_what_fits_with_room_to_spare() -> None:
    original = {
        "x-saga-id": "5f0c2a57-0d5e-4b8e-a1f2-7c9d3e4b6a01",
        **_largest_table(),
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    message, bounded = _republished(original)
    assert _payload(message) <= DEFAULT_FRAME_MAX - 8 - HEADROOM_BYTES
    assert bounded.dropped  # some had to go …
    assert len(bounded.dropped) < len(original) / 10  # … only as many as needed
    assert bounded.reason == f"headers_too_large: {len(bounded.dropped)} headers dropped"
    # what sagakit and the tracing read comes first, and sagakit's own headers win
    assert message.headers["traceparent"] == original["traceparent"]
    assert message.headers["x-saga-id"] == original["x-saga-id"]
    for key, value in ADDED.items():
        assert message.headers[key] == value
    note = message.headers["x-saga-headers-dropped"]
    assert note.startswith(f"{len(bounded.dropped)} of {len(original)} headers dropped")


def test_a_few_big_headers_are_dropped_and_the_small_ones_kept() -> None:
    original = {f"big-{n}": "x" * 40_000 for n in range(4)} | {"small": "kept"}
    message, bounded = _republished(original)
    assert _payload(message) <= DEFAULT_FRAME_MAX - 8 - HEADROOM_BYTES
    assert bounded.dropped == ["big-3"]
    assert message.headers["small"] == "kept"


def test_an_oversized_header_sagakit_reads_is_dropped_not_trusted() -> None:
    original = {"traceparent": "0" * 20_000, "x-death": [{"queue": "q" * 200}] * 200}
    message, bounded = _republished(original)
    assert set(bounded.dropped) == {"traceparent", "x-death"}
    assert "traceparent" not in message.headers


def test_a_smaller_frame_limit_is_respected() -> None:
    message, bounded = _republished(_largest_table(), frame_max=16_384)
    assert _payload(message) <= 16_384 - 8 - HEADROOM_BYTES
    assert bounded.dropped


def test_values_the_client_cannot_encode_again_are_converted_or_dropped() -> None:
    deep: Any = []
    for _ in range(5_000):
        deep = [deep]
    original = {
        "not-utf8": b"\xff\xfe",
        "huge-float": 1e300,
        "object": object(),
        "too-deep": deep,
    }
    message, bounded = _republished(original)
    assert message.headers["not-utf8"] == bytearray(b"\xff\xfe")
    assert message.headers["huge-float"] == repr(1e300)
    assert set(bounded.dropped) == {"object", "too-deep"}
    encode.field_table(message.headers)  # the whole table encodes


@pytest.mark.parametrize("frame_max", [None, DEFAULT_FRAME_MAX])
def test_the_budget_counts_the_other_properties_and_a_generated_message_id(
    frame_max: int | None,
) -> None:
    with_id = aio_pika.Message(b"x", message_id="m" * 200, type="t" * 200)
    without_id = aio_pika.Message(b"x")
    bare = without_id.properties
    bare.headers = None  # the table's own 4 bytes are counted with its entries
    assert header_budget(with_id.properties, body_size=1, frame_max=frame_max) < header_budget(
        without_id.properties, body_size=1, frame_max=frame_max
    )
    generated_message_id = 33
    assert header_budget(without_id.properties, body_size=1, frame_max=frame_max) == (
        DEFAULT_FRAME_MAX
        - 8
        - len(ContentHeader(0, 1, bare).marshal())
        - generated_message_id
        - HEADROOM_BYTES
    )


def test_republishable_keeps_what_encodes() -> None:
    assert republishable({"a": [b"x", 1.5]}) == {"a": [bytearray(b"x"), 1.5]}
