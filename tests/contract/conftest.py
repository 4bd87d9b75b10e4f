"""Shared checks of the contract tests: what every emitted event must satisfy on the wire."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from order_contracts import ORDER_SAGA, Order, OrderCreated, OrderEvent
from sagakit import Envelope, derived_event_id

WireCheck = Callable[..., list[Envelope[Any]]]


def _check_wire(
    emitted: Sequence[Envelope[Any]],
    expected_types: Sequence[str],
    *,
    producer: str,
    cause: Envelope[Any],
    order: OrderCreated,
) -> list[Envelope[Any]]:
    """Assert the exact events out, each valid against order_contracts; returns them."""
    assert [e.event_type for e in emitted] == list(expected_types)
    expected_order = Order.model_validate(order.model_dump())
    previous = cause
    for envelope in emitted:
        model = ORDER_SAGA.model_for(envelope.event_type)
        # What went on the wire parses back into the contract's model, unchanged.
        reparsed = Envelope[model].model_validate_json(envelope.encode())  # type: ignore[valid-type]
        assert reparsed == envelope
        assert isinstance(envelope.payload, model)
        assert envelope.schema_version == model.schema_version
        assert envelope.producer == producer
        assert envelope.event_id == derived_envelope_id(envelope, producer)
        assert envelope.context.saga_id == cause.context.saga_id
        assert envelope.context.saga_type == ORDER_SAGA.saga_type
        assert envelope.context.deadline == cause.context.deadline
        assert isinstance(envelope.payload, OrderEvent)
        assert envelope.payload.order == expected_order
        # Each event is caused by the one before it: the trigger, then what was just emitted.
        assert envelope.context.causation_id == previous.event_id
        previous = envelope
    return list(emitted)


def derived_envelope_id(envelope: Envelope[Any], producer: str) -> Any:
    return derived_event_id(envelope.context.saga_id, producer, envelope.event_type)


@pytest.fixture
def check_wire() -> WireCheck:
    """``check_wire(emitted, types, producer=, cause=, order=)``: the contract of what is out."""
    return _check_wire


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """A throwaway SQLite database for one service."""
    return f"sqlite+aiosqlite:///{tmp_path}/service.db"
