"""The envelope: JSON round trip, AMQP properties, derived event ids, money as strings."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from order_contracts import ORDER_SAGA, InventoryReserved, OrderCreated
from order_contracts.samples import sample_order
from pydantic import ValidationError
from sagakit import Envelope, SagaContext, derived_event_id


def test_round_trip_keeps_every_field() -> None:
    order = sample_order()
    envelope = Envelope.new(order, context=SagaContext.start("order_fulfilment"), producer="cli")
    decoded = Envelope[OrderCreated].model_validate_json(envelope.encode())
    assert decoded == envelope
    assert decoded.payload.total() == Decimal("3.00")


def test_the_body_follows_the_wire_contract() -> None:
    envelope = Envelope.new(
        sample_order(), context=SagaContext.start("order_fulfilment"), producer="cli"
    )
    body = json.loads(envelope.encode())
    assert set(body) == {
        "event_id",
        "event_type",
        "schema_version",
        "occurred_at",
        "producer",
        "context",
        "payload",
    }
    assert body["event_type"] == "order.created"
    assert body["schema_version"] == 1
    assert body["occurred_at"].endswith("Z")
    assert set(body["context"]) == {"saga_id", "saga_type", "causation_id", "deadline", "steps"}
    assert body["payload"]["items"][0]["unit_price"] == "1.50"  # money is a string


def test_amqp_properties_and_headers() -> None:
    context = SagaContext.start("order_fulfilment")
    envelope = Envelope.new(sample_order(), context=context, producer="cli")
    props = envelope.amqp_properties()
    assert props["message_id"] == str(envelope.event_id)
    assert props["correlation_id"] == str(context.saga_id)
    assert props["message_type"] == "order.created"
    assert props["content_type"] == "application/json"
    assert props["persist"] is True
    assert envelope.amqp_headers() == {"x-saga-id": str(context.saga_id)}


def test_derived_event_ids_are_stable_and_distinct() -> None:
    saga = uuid.uuid4()
    assert derived_event_id(saga, "inventory", "inventory.released") == derived_event_id(
        saga, "inventory", "inventory.released"
    )
    assert derived_event_id(saga, "inventory", "inventory.released") != derived_event_id(
        saga, "inventory", "order.cancelled"
    )
    assert derived_event_id(saga, "x", "e") != derived_event_id(uuid.uuid4(), "x", "e")


def test_payload_models_ignore_unknown_fields_for_forward_compatibility() -> None:
    order = sample_order()
    raw = InventoryReserved(order=order, reservation_id="r1").model_dump(mode="json")
    raw["added_later"] = "optional"
    assert InventoryReserved.model_validate(raw).reservation_id == "r1"


@pytest.mark.parametrize("price", [1.5, 2, True, None, "abc", "1.234", "-1.00", "NaN", "Infinity"])
def test_money_must_be_a_decimal_string(price: object) -> None:
    raw = sample_order().model_dump(mode="json")
    raw["items"][0]["unit_price"] = price
    with pytest.raises(ValidationError):
        OrderCreated.model_validate(raw)


def test_every_event_type_is_registered_once() -> None:
    assert len(ORDER_SAGA.events) == 13
    for event_type, model in ORDER_SAGA.events.items():
        assert model.event_type == event_type
