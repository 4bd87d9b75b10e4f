"""Compatibility, read from the committed contracts: every consumed event is produced with a
schema its consumer accepts, and an event's schema changes without a new ``schema_version``
only by new optional fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from order_contracts import ORDER_SAGA, Money, OrderEvent
from pydantic import Field
from sagakit import Envelope, EventPayload
from sagakit.spec._asyncapi import (
    DocumentedEvent,
    documented_events,
    incompatible_changes,
    payload_schema,
    schema_file_name,
)

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _documents() -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((CONTRACTS / "asyncapi").glob("*.json"))
    ]


DOCUMENTS = _documents()
CONSUMED = [event for doc in DOCUMENTS for event in documented_events(doc)[0]]
EMITTED = [event for doc in DOCUMENTS for event in documented_events(doc)[1]]


def test_there_is_a_document_per_participant_and_one_for_the_tracker() -> None:
    assert sorted(d["info"]["title"] for d in DOCUMENTS) == sorted(
        [*ORDER_SAGA.participants(), "tracker"]
    )


def test_the_documents_name_what_the_spec_names() -> None:
    spec_consumed = (
        {(s.participant, e) for s in ORDER_SAGA.steps for e in (s.trigger, *s.compensate_on)}
        | {(r.participant, r.trigger) for r in ORDER_SAGA.reactions}
        | {("tracker", e) for e in ORDER_SAGA.events}
    )

    assert {(e.service, e.event_type) for e in CONSUMED} == spec_consumed
    assert {e.event_type for e in EMITTED} == set(ORDER_SAGA.events) - {ORDER_SAGA.start_event}


@pytest.mark.parametrize("consumed", CONSUMED, ids=lambda e: f"{e.service}<-{e.event_type}")
def test_every_consumed_event_is_produced_with_a_compatible_schema(
    consumed: DocumentedEvent,
) -> None:
    if consumed.event_type == ORDER_SAGA.start_event:
        # Produced by a client outside the flow, from order_contracts' own model.
        model = ORDER_SAGA.model_for(consumed.event_type)
        schema = Envelope[model].model_json_schema()  # type: ignore[valid-type]
        producers = [DocumentedEvent("a client", consumed.event_type, schema, schema)]
    else:
        producers = [e for e in EMITTED if e.event_type == consumed.event_type]
    assert producers, f"{consumed.service} consumes {consumed.event_type}, nobody emits it"
    for producer in producers:
        changes = incompatible_changes(
            consumed.schema, producer.schema, old_root=consumed.root, new_root=producer.root
        )
        assert changes == [], (
            f"{producer.service} emits {consumed.event_type} in a form {consumed.service} "
            f"does not read: {changes}"
        )


@pytest.mark.parametrize("model", list(ORDER_SAGA.events.values()), ids=lambda m: m.event_type)
def test_a_schema_changes_only_by_new_optional_fields_within_its_version(
    model: type[EventPayload],
) -> None:
    baseline_file = CONTRACTS / "schemas" / schema_file_name(model)
    assert baseline_file.exists(), (
        f"no baseline for {model.event_type} v{model.schema_version}: "
        "run `uv run saga contracts export`"
    )
    baseline = json.loads(baseline_file.read_text(encoding="utf-8"))

    assert incompatible_changes(baseline, payload_schema(model)) == [], (
        f"{model.event_type} changed without a new schema_version"
    )


# -- the rule itself, on a model that evolves -------------------------------------------


class Refunded(OrderEvent):
    event_type: ClassVar[str] = "payment.refunded"
    payment_id: str | None = None
    amount: Money | None = None


class RefundedWithNote(Refunded):
    note: str | None = None  # new and optional: compatible


class RefundedWithRequiredNote(Refunded):
    note: str  # new and required: old producers never send it


class RefundedWithoutAmount(OrderEvent):
    event_type: ClassVar[str] = "payment.refunded"
    payment_id: str | None = None


class RefundedWithNumericId(OrderEvent):
    event_type: ClassVar[str] = "payment.refunded"
    payment_id: int | None = None
    amount: Money | None = None


class RefundedWithShorterId(OrderEvent):
    event_type: ClassVar[str] = "payment.refunded"
    payment_id: str | None = Field(default=None, max_length=10, description="shorter now")
    amount: Money | None = None


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (Refunded, []),
        (RefundedWithNote, []),
        (RefundedWithRequiredNote, ["$.note: became required"]),
        (RefundedWithoutAmount, ["$.amount: removed"]),
        (RefundedWithNumericId, ["$.payment_id<anyOf>[0]<type>: 'string' became 'integer'"]),
        (RefundedWithShorterId, ["$.payment_id<anyOf>[0]: 'maxLength' added"]),
    ],
    ids=[
        "same",
        "optional_field_added",
        "required_field_added",
        "removed",
        "retyped",
        "constrained",
    ],
)
def test_the_rule_accepts_only_new_optional_fields(
    changed: type[EventPayload], expected: list[str]
) -> None:
    assert incompatible_changes(payload_schema(Refunded), payload_schema(changed)) == expected


def test_the_rule_follows_references_into_nested_models() -> None:
    before = payload_schema(Refunded)
    after = json.loads(json.dumps(before))
    del after["$defs"]["Customer"]["properties"]["email"]

    assert incompatible_changes(before, after) == ["$.order.customer.email: removed"]
