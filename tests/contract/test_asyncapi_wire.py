"""The committed AsyncAPI documents carry the whole wire contract, and say what the code does:
headers, correlation and message ids, AMQP bindings, queue arguments, retry and dead-letter
queues, and the broker rights of each service's user (deploy/rabbitmq/definitions.json)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from order_contracts import ORDER_SAGA
from order_contracts.samples import sample_order
from sagakit import Envelope, SagaContext
from sagakit.broker import _topology as topology
from sagakit.cli._check import load_services
from sagakit.runtime import Subscription
from sagakit.spec import emitted_events
from sagakit.spec._asyncapi_wire import DOCUMENTED_HEADERS
from sagakit.tracker import tracker_queue

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "contracts" / "asyncapi"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
PARTICIPANTS = ORDER_SAGA.participants()
SERVICES = [*PARTICIPANTS, "tracker"]


def _document(service: str) -> dict[str, Any]:
    document = json.loads((ASYNCAPI / f"{service}.json").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _resolve(document: Mapping[str, Any], node: Mapping[str, Any]) -> Any:
    while "$ref" in node:
        target: Any = document
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part.replace("%5B", "[").replace("%5D", "]")]
        node = target
    return node


def _operations(document: Mapping[str, Any], role: str) -> Iterator[dict[str, Any]]:
    return (op for op in document["operations"].values() if op["x-saga-role"] == role)


def _messages(document: Mapping[str, Any], role: str) -> Iterator[dict[str, Any]]:
    for operation in _operations(document, role):
        for reference in operation["messages"]:
            yield _resolve(document, reference)


def _subscriptions(participant: str) -> list[Subscription]:
    (loaded,) = [s for s in load_services(ORDER_SAGA) if s.participant == participant]
    return list(loaded.service.runtime.subscriptions)


def _queue_channel(document: Mapping[str, Any], queue: str) -> dict[str, Any]:
    (channel,) = [
        c
        for c in document["channels"].values()
        if c["bindings"]["amqp"].get("queue", {}).get("name") == queue
    ]
    return cast(dict[str, Any], channel)


def _bound_to(channel: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (b["exchange"]["name"], b["exchange"]["type"], b["routingKey"])
        for b in channel["bindings"]["amqp"]["x-queue-bindings"]
    }


@pytest.mark.parametrize("service", SERVICES)
def test_every_event_message_documents_headers_ids_and_amqp_properties(service: str) -> None:
    document = _document(service)
    envelope = Envelope.new(
        sample_order(),
        context=SagaContext.start(ORDER_SAGA.saga_type),
        producer="web-shop",
    )
    sent_headers = {**envelope.amqp_headers(), "traceparent": "-", "tracestate": "-"}
    sent_properties = envelope.amqp_properties()
    messages = list(_messages(document, "event"))
    assert messages
    for message in messages:
        headers = _resolve(document, message["headers"])
        assert headers["type"] == "object"
        assert set(headers["required"]) <= set(envelope.amqp_headers())
        assert set(sent_headers) <= set(headers["properties"]) | {"baggage"}
        assert message["correlationId"]["location"] == "$message.header#/x-saga-id"
        assert "saga id" in message["correlationId"]["description"]
        assert "event id" in message["correlationId"]["description"]
        binding = message["bindings"]["amqp"]
        properties = binding["x-properties"]["properties"]
        assert "event id" in properties["message_id"]["description"]
        assert "saga id" in properties["correlation_id"]["description"]
        assert properties["content_type"]["const"] == sent_properties["content_type"]
        assert properties["delivery_mode"]["const"] == 2
        assert sent_properties["persist"] is True
        payload = _resolve(document, message["payload"])
        model = ORDER_SAGA.model_for(binding["messageType"])
        assert payload["title"] == f"Envelope[{model.__name__}]"
        assert properties["type"]["const"] == binding["messageType"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_says_its_part_and_persistent_delivery(service: str) -> None:
    document = _document(service)
    for operation in document["operations"].values():
        assert operation["x-saga-role"] in {"event", "retry", "dead-letter"}
        assert operation["bindings"]["amqp"]["deliveryMode"] == 2
        if operation["action"] == "send":
            assert operation["bindings"]["amqp"]["mandatory"] is True


@pytest.mark.parametrize("participant", PARTICIPANTS)
def test_each_work_queue_is_documented_with_the_arguments_and_bindings_it_is_declared_with(
    participant: str,
) -> None:
    document = _document(participant)
    for sub in _subscriptions(participant):
        channel = _queue_channel(document, sub.queue)
        arguments = channel["bindings"]["amqp"]["x-queue-arguments"]
        assert arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": topology.DELIVERY_LIMIT,
            "x-dead-letter-exchange": f"{participant}.dlx",
        }
        assert _bound_to(channel) == {
            (ORDER_SAGA.exchange, "topic", sub.event_type),
            (f"{participant}.retries", "direct", sub.queue),
        }


@pytest.mark.parametrize("participant", PARTICIPANTS)
def test_each_work_queue_has_a_documented_delay_queue_that_leads_back_to_it(
    participant: str,
) -> None:
    document = _document(participant)
    retries = {
        _resolve(document, op["channel"])["bindings"]["amqp"]["queue"]["name"]: op
        for op in _operations(document, "retry")
    }
    subscriptions = _subscriptions(participant)
    assert set(retries) == {f"{sub.queue}.retry" for sub in subscriptions}
    for sub in subscriptions:
        operation = retries[f"{sub.queue}.retry"]
        assert operation["action"] == "send"
        channel = _resolve(document, operation["channel"])
        assert channel["bindings"]["amqp"]["x-queue-arguments"] == {
            # Quorum, so that a retry outlives a node and can be declared on any node.
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": f"{participant}.retries",
            "x-dead-letter-routing-key": sub.queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        assert _bound_to(channel) == {(f"{participant}.retries", "direct", f"{sub.queue}.retry")}
        (message,) = [_resolve(document, m) for m in operation["messages"]]
        headers = _resolve(document, message["headers"])
        assert {topology.ATTEMPT_HEADER, topology.LAST_ERROR_HEADER} <= set(headers["required"])
        assert message["bindings"]["amqp"]["messageType"] == sub.event_type


@pytest.mark.parametrize("participant", PARTICIPANTS)
def test_the_dead_letter_queue_is_documented_with_the_reason_headers(participant: str) -> None:
    document = _document(participant)
    (operation,) = _operations(document, "dead-letter")
    assert operation["action"] == "send"
    channel = _resolve(document, operation["channel"])
    assert channel["bindings"]["amqp"]["queue"]["name"] == f"{participant}.dlq"
    assert channel["bindings"]["amqp"]["x-queue-arguments"] == {"x-queue-type": "quorum"}
    assert _bound_to(channel) == {(f"{participant}.dlx", "fanout", "#")}
    (message,) = [_resolve(document, m) for m in operation["messages"]]
    headers = _resolve(document, message["headers"])["properties"]
    for header in (
        topology.REASON_HEADER,
        topology.ORIGIN_QUEUE_HEADER,
        topology.PARKED_AT_HEADER,
        topology.FIRST_FAILURE_HEADER,
        "x-death",
    ):
        assert header in headers, header


def test_every_header_the_runtime_writes_is_documented() -> None:
    written = {
        value
        for name, value in vars(topology).items()
        if name.endswith("_HEADER") and isinstance(value, str)
    }
    assert written
    assert written <= DOCUMENTED_HEADERS
    for participant in PARTICIPANTS:
        schemas = _document(participant)["components"]["schemas"]
        documented = set(schemas["RetryHeaders"]["properties"]) | set(
            schemas["DeadLetterHeaders"]["properties"]
        )
        assert written <= documented, participant


def _topic_permissions() -> dict[str, dict[str, str]]:
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    return {t["user"]: t for t in definitions["topic_permissions"]}


@pytest.mark.parametrize("service", SERVICES)
def test_the_security_scheme_states_the_rights_the_broker_definitions_grant(
    service: str,
) -> None:
    document = _document(service)
    schemes = document["components"]["securitySchemes"]
    (server,) = document["servers"].values()
    assert {_resolve(document, s)["type"] for s in server["security"]} == {
        "userPassword",
        "X509",
    }
    rights = schemes["userPassword"]["x-broker-permissions"]
    assert rights["user"] == service
    topics = _topic_permissions()[service]
    events = list(ORDER_SAGA.events)
    may_publish = [e for e in events if re.fullmatch(topics["write"], e)]
    may_bind = [e for e in events if re.fullmatch(topics["read"], e)]
    assert sorted(may_publish) == sorted(rights["publishes"])
    if rights["binds"] == ["#"]:
        assert may_bind == events
    else:
        assert sorted(may_bind) == sorted(rights["binds"])
    if service != "tracker":
        assert rights["publishes"] == list(emitted_events(ORDER_SAGA, service))


def test_the_tracker_document_receives_every_event_of_the_flow_on_its_own_queue() -> None:
    document = _document("tracker")
    (operation,) = document["operations"].values()
    assert operation["action"] == "receive"
    channel = _resolve(document, operation["channel"])
    queue = tracker_queue()
    assert channel["bindings"]["amqp"]["queue"]["name"] == queue.name
    assert channel["bindings"]["amqp"]["x-queue-arguments"] == queue.arguments
    assert _bound_to(channel) == {(ORDER_SAGA.exchange, "topic", "#")}
    received = [m["bindings"]["amqp"]["messageType"] for m in _messages(document, "event")]
    assert received == list(ORDER_SAGA.events)


def test_a_saga_id_header_names_the_saga_the_documents_correlate_on() -> None:
    saga_id = uuid.uuid4()
    context = SagaContext.start(ORDER_SAGA.saga_type)
    context = context.model_copy(update={"saga_id": saga_id})
    envelope = Envelope.new(
        sample_order(),
        context=context,
        producer="web-shop",
    )
    location = _document("payment")["components"]["messages"]
    (correlation,) = {json.dumps(m["correlationId"], sort_keys=True) for m in location.values()}
    header = json.loads(correlation)["location"].removeprefix("$message.header#/")
    assert envelope.amqp_headers()[header] == str(saga_id)
    assert envelope.amqp_properties()["correlation_id"] == str(saga_id)
    assert envelope.amqp_properties()["message_id"] == str(envelope.event_id)
