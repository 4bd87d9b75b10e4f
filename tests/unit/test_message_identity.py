"""The saga id and event type of a raw message come from its envelope, in logs too."""

from __future__ import annotations

import json
import uuid

import pytest
from sagakit.broker._identity import identify, peek_envelope

SAGA_ID = str(uuid.uuid4())


def _envelope(**fields: object) -> bytes:
    return json.dumps({"event_type": "order.created", **fields}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "correlation_id", "expected"),
    [
        # the envelope wins over a correlation id used for something else, and the header
        (_envelope(context={"saga_id": SAGA_ID}), {"x-saga-id": "other"}, "corr-1", SAGA_ID),
        # no envelope: the header, then the correlation id as it came on the wire
        (b"not json", {"x-saga-id": SAGA_ID}, "corr-1", SAGA_ID),
        (b"not json", {}, SAGA_ID, SAGA_ID),
        (b"not json", {}, None, None),
        # nothing that does not look like an identifier reaches a log line
        (_envelope(context={"saga_id": "a\nb"}), {"x-saga-id": "c d"}, "e\tf", None),
        (_envelope(context={"saga_id": 7}), {}, None, None),
        (b"[" * 100_000, {}, None, None),
    ],
)
def test_the_saga_id_comes_from_the_envelope_then_the_header_then_the_wire(
    body: bytes, headers: dict[str, object], correlation_id: str | None, expected: str | None
) -> None:
    assert identify(body=body, headers=headers, correlation_id=correlation_id).saga_id == expected


def test_the_event_type_comes_from_the_envelope_then_the_type_property() -> None:
    assert identify(body=_envelope(), headers={}, message_type="x.y").event_type == "order.created"
    assert identify(body=b"{}", headers={}, message_type="x.y").event_type == "x.y"
    assert peek_envelope(b"[1, 2]") is None
