"""Contracts on file: each service's AsyncAPI document, each event's schema per version, and
the rules that say whether two schemas of one event are compatible."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from faststream.specification import AsyncAPI

from sagakit._envelope import Envelope, EventPayload
from sagakit.broker._topology import flow_exchange
from sagakit.spec import _asyncapi_wire as wire
from sagakit.spec._checker import emitted_events
from sagakit.tracker._app import TRACKER_QUEUE, tracker_queue

if TYPE_CHECKING:
    from sagakit.runtime._app import SagaService
    from sagakit.runtime._runtime import SagaRuntime
    from sagakit.spec._spec import SagaSpec
    from sagakit.tracker._app import TrackerService

DOCUMENTED_SERVER = "amqp://localhost:5672/"
"""The server the committed documents name: where a service really connects (host, virtual
host) is deployment, not contract, and would make them differ from one machine to the next."""

TRACKER_DOCUMENT = "tracker"
"""The tracker's document name: it observes every event of the flow and publishes none."""

# Keys that explain a schema without changing what it accepts.
_DOC_KEYS = frozenset({"title", "description", "examples"})


def asyncapi_document(service: SagaService, *, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``service``: the whole wire contract, as JSON data.

    FastStream generates the channels of every event the participant consumes (its
    subscribers, one quorum queue each) and emits (documentation-only publishers the
    runtime registers), each with the schema of its envelope. Added to that: the headers,
    what the AMQP properties carry, the queues' arguments and bindings, the delay queues
    of retries, the dead-letter queue, and how the service logs in to the broker. The
    server is the one ``service`` was built for: build it for ``DOCUMENTED_SERVER`` to get
    a document that is the same on every machine.
    """
    runtime = service.runtime
    spec = runtime.spec
    data = _generated(
        service.broker,
        title=runtime.name,
        version=version,
        description=(
            f"The {runtime.name} participant of the {spec.saga_type} saga, on the topic "
            f"exchange {spec.exchange!r}: routing key = event type. {_WIRE_SUMMARY}"
        ),
        identifier=f"urn:sagakit:{spec.saga_type}:{runtime.name}",
    )
    _document_participant(data, runtime)
    return data


def tracker_document(tracker: TrackerService, *, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the saga tracker: one queue that receives every event.

    Like ``asyncapi_document``, for the tracker ``build_tracker`` makes; its one channel
    lists every event type of the flow as a message of its own.
    """
    spec = tracker.spec
    data = _generated(
        tracker.broker,
        title=TRACKER_DOCUMENT,
        version=version,
        description=(
            f"The saga tracker of the {spec.saga_type} saga: it consumes every event on the "
            f"topic exchange {spec.exchange!r} from its own queue, records each once, and "
            f"publishes nothing. {_WIRE_SUMMARY}"
        ),
        identifier=f"urn:sagakit:{spec.saga_type}:{TRACKER_DOCUMENT}",
    )
    _document_tracker(data, spec)
    return data


_WIRE_SUMMARY = (
    "Every event is a JSON envelope, published persistent (delivery mode 2) with publisher "
    "confirms; its AMQP `message_id` is the event id, its `correlation_id` and "
    "`x-saga-id` header the saga id, its `type` the event type."
)


def _generated(
    broker: Any, *, title: str, version: str, description: str, identifier: str
) -> dict[str, Any]:
    specification = AsyncAPI(
        broker,
        title=title,
        version=version,
        description=description,
        identifier=identifier,
        schema_version="3.0.0",
    ).to_specification()
    data: dict[str, Any] = specification.to_jsonable()
    return data


def _vhost(data: Mapping[str, Any]) -> str:
    (server,) = data["servers"].values()
    return unquote(str(server.get("pathname") or "/"))


def _servers(data: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"$ref": f"#/servers/{name}"} for name in data["servers"]]


def _secure_servers(data: dict[str, Any], user: str, **rights: Any) -> None:
    for server in data["servers"].values():
        server["security"] = wire.server_security()
        server["description"] = wire.server_description(user)
    components = data.setdefault("components", {})
    components["securitySchemes"] = wire.security_schemes(user, **rights)


def _add_schemas(data: dict[str, Any], names: Iterable[str]) -> None:
    schemas = wire.header_schemas()
    wire.merge_missing(
        data["components"].setdefault("schemas", {}), {name: schemas[name] for name in names}
    )


def _event_message(message: dict[str, Any], event_type: str) -> None:
    message["headers"] = wire.component_ref("schemas", wire.EVENT_HEADERS)
    message["correlationId"] = wire.CORRELATION_ID
    message["bindings"] = {"amqp": wire.event_message_binding(event_type)}


def _document_participant(data: dict[str, Any], runtime: SagaRuntime) -> None:
    name, topology, vhost = runtime.name, runtime.topology, _vhost(data)
    subscriptions = {sub.queue: sub for sub in runtime.subscriptions}
    _secure_servers(
        data,
        name,
        owns=f"{name}.*",
        publishes=emitted_events(runtime.spec, name),
        binds=[sub.event_type for sub in runtime.subscriptions],
    )
    _add_schemas(
        data, [wire.EVENT_HEADERS, wire.RETRY_HEADERS, wire.DEAD_LETTER_HEADERS, wire.PARKED_BODY]
    )
    for channel in data["channels"].values():
        event_type = channel["address"]
        for reference in channel["messages"].values():
            _event_message(_message(data, reference), event_type)
        queue = channel["bindings"]["amqp"].get("queue")
        if queue is not None:
            work = topology.work_queue(subscriptions[queue["name"]].event_type)
            channel["bindings"]["amqp"] = wire.queue_binding(
                work,
                vhost=vhost,
                bound_to=[(runtime.exchange, event_type), (topology.retry_exchange(), work.name)],
            )
    for operation in data["operations"].values():
        operation[wire.ROLE] = wire.EVENT_ROLE
        operation["bindings"]["amqp"]["deliveryMode"] = wire.PERSISTENT

    servers = _servers(data)
    for sub in runtime.subscriptions:
        retry = topology.retry_queue(sub.event_type)
        (consumed,) = data["channels"][sub.queue]["messages"].values()
        payload = _resolve(data, consumed)["payload"]
        _add_operation(
            data,
            name=retry.name,
            role=wire.RETRY_ROLE,
            channel={
                "address": retry.name,
                "description": (
                    f"Delay queue of {sub.queue}: a message whose handling failed for a "
                    f"transient reason waits here, then expires back into {sub.queue} "
                    f"through {topology.retry_exchange().name}. After the retry budget "
                    "the step fails (a failure event) or the compensation is parked."
                ),
                "servers": servers,
                "bindings": {
                    "amqp": wire.queue_binding(
                        retry, vhost=vhost, bound_to=[(topology.retry_exchange(), retry.name)]
                    )
                },
            },
            message={
                "title": f"{retry.name}:RetryMessage",
                "summary": f"{sub.event_type}, to be handled again",
                "payload": payload,
                "headers": wire.component_ref("schemas", wire.RETRY_HEADERS),
                "correlationId": wire.CORRELATION_ID,
                "bindings": {"amqp": wire.event_message_binding(sub.event_type)},
            },
            operation={
                "description": (
                    f"Retry later: published to {topology.retry_exchange().name} with a "
                    "per-message expiration, the backoff of this attempt."
                ),
                "bindings": {"amqp": _publish_binding(retry.name)},
            },
        )

    parked = topology.dead_letter_queue()
    dlx = topology.dead_letter_exchange()
    limits = {
        topology.work_queue(sub.event_type).arguments.get("x-delivery-limit")
        for sub in runtime.subscriptions
    }
    delivery_limit = " or ".join(str(limit) for limit in sorted(limits, key=str))
    _add_operation(
        data,
        name=parked.name,
        role=wire.DEAD_LETTER_ROLE,
        channel={
            "address": parked.name,
            "description": (
                f"{name}'s dead-letter queue: messages it cannot process, with the reason. "
                "Read, replayed and purged with `saga dlq`."
            ),
            "servers": servers,
            "bindings": {"amqp": wire.queue_binding(parked, vhost=vhost, bound_to=[(dlx, "#")])},
        },
        message={
            "title": f"{parked.name}:ParkedMessage",
            "summary": "A message parked with the reason",
            "payload": wire.component_ref("schemas", wire.PARKED_BODY),
            "headers": wire.component_ref("schemas", wire.DEAD_LETTER_HEADERS),
            "correlationId": wire.CORRELATION_ID,
            "bindings": {
                "amqp": {
                    "bindingVersion": wire.AMQP_BINDING_VERSION,
                    "x-properties": wire.parked_properties(),
                }
            },
        },
        operation={
            "description": (
                f"Park: bad input (too large, undecodable, not an envelope of the queue's "
                f"event type, an unsupported schema version or saga type) and compensations "
                f"whose retries ran out are published to {dlx.name} with the reason, then "
                "acknowledged: never requeued, never dropped. RabbitMQ dead-letters here "
                f"too, through {dlx.name}, a message delivered "
                f"{delivery_limit} times without an acknowledgement."
            ),
            "bindings": {"amqp": _publish_binding(None)},
        },
    )


def _publish_binding(routing_key: str | None) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "ack": True,
        "deliveryMode": wire.PERSISTENT,
        "mandatory": True,
        "bindingVersion": wire.AMQP_BINDING_VERSION,
    }
    if routing_key is not None:
        binding["cc"] = [routing_key]
    return binding


def _add_operation(
    data: dict[str, Any],
    *,
    name: str,
    role: str,
    channel: dict[str, Any],
    message: dict[str, Any],
    operation: dict[str, Any],
) -> None:
    key = message["title"].rpartition(":")[2]
    wire.merge_missing(data["components"].setdefault("messages", {}), {message["title"]: message})
    channel["messages"] = {key: wire.component_ref("messages", message["title"])}
    wire.merge_missing(data["channels"], {name: channel})
    operation.update(
        {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{key}"}],
            wire.ROLE: role,
        }
    )
    wire.merge_missing(data["operations"], {name: operation})


def _document_tracker(data: dict[str, Any], spec: SagaSpec) -> None:
    vhost = _vhost(data)
    _secure_servers(
        data,
        TRACKER_DOCUMENT,
        owns=f"{TRACKER_DOCUMENT}.*",
        publishes=[],
        binds=["#"],
    )
    _add_schemas(data, [wire.EVENT_HEADERS])
    components = data["components"]
    channel = data["channels"][TRACKER_QUEUE]
    # FastStream documents the raw bytes the handler takes; the tracker reads envelopes.
    for reference in channel["messages"].values():
        message = components["messages"].pop(_reference_name(reference))
        components["schemas"].pop(_reference_name(message["payload"]))
    channel["messages"] = {}
    for event_type, model in spec.events.items():
        schema_name, schemas = _envelope_schemas(model)
        wire.merge_missing(components["schemas"], schemas)
        title = f"{TRACKER_QUEUE}:{model.__name__}"
        message = {"title": title, "payload": wire.component_ref("schemas", schema_name)}
        _event_message(message, event_type)
        components["messages"][title] = message
        channel["messages"][model.__name__] = wire.component_ref("messages", title)
    queue = tracker_queue()
    channel["description"] = (
        f"{channel.get('description', '')} Bound with `#` to {spec.exchange!r}: every event "
        "type of the flow arrives here. The tracker has no dead-letter queue: a message it "
        "cannot decode is logged and acknowledged, one it cannot store goes back to the "
        f"queue, and after {queue.arguments.get('x-delivery-limit')} deliveries RabbitMQ "
        "drops it "
        "(`saga tracker rebuild` recovers it from the participants' outboxes)."
    ).strip()
    channel["bindings"]["amqp"] = wire.queue_binding(
        queue,
        vhost=vhost,
        bound_to=[(flow_exchange(spec.exchange), "#")],
    )
    (operation,) = data["operations"].values()
    operation[wire.ROLE] = wire.EVENT_ROLE
    operation["bindings"]["amqp"]["deliveryMode"] = wire.PERSISTENT
    operation["messages"] = [
        {"$ref": f"#/channels/{TRACKER_QUEUE}/messages/{key}"} for key in channel["messages"]
    ]


def _message(data: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = data["components"]["messages"][_reference_name(reference)]
    return message


def _reference_name(reference: Mapping[str, Any]) -> str:
    return unquote(str(reference["$ref"]).rpartition("/")[2])


def _envelope_schemas(model: type[EventPayload]) -> tuple[str, dict[str, Any]]:
    """The envelope of ``model`` as FastStream names its schemas: the envelope's title, and
    each nested model under its own name."""
    envelope: type[Envelope[Any]] = Envelope[model]  # type: ignore[valid-type]
    schema = envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})
    name = str(schema["title"])
    return name, {name: schema, **nested}


def render_json(data: Any) -> str:
    """Stable, pretty JSON: sorted keys, two-space indent, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def payload_schema(model: type[EventPayload]) -> dict[str, Any]:
    """The JSON schema of an event's payload, as consumers validate it."""
    return model.model_json_schema()


def schema_file_name(model: type[EventPayload]) -> str:
    """``<event_type>.v<schema_version>.json``: where an event's baseline schema is kept."""
    return f"{model.event_type}.v{model.schema_version}.json"


@dataclass(frozen=True, slots=True)
class DocumentedEvent:
    """One event a document says its service consumes or emits, with its schema.

    Attributes:
        service: The document's title (the participant).
        event_type: The routing key.
        schema: The message payload schema (the envelope).
        root: The whole document, against which ``schema``'s references resolve.
    """

    service: str
    event_type: str
    schema: Mapping[str, Any]
    root: Mapping[str, Any]


def documented_events(
    document: Mapping[str, Any],
) -> tuple[list[DocumentedEvent], list[DocumentedEvent]]:
    """What an AsyncAPI document says its service consumes and emits, in that order."""
    consumed: list[DocumentedEvent] = []
    emitted: list[DocumentedEvent] = []
    service = str(document["info"]["title"])
    for operation in document.get("operations", {}).values():
        if operation.get(wire.ROLE) != wire.EVENT_ROLE:
            continue  # a retry or a parked message: not an event of the flow
        for message_ref in operation.get("messages", []):
            message = _resolve(document, message_ref)
            event_type = message["bindings"]["amqp"]["messageType"]
            event = DocumentedEvent(service, event_type, message["payload"], document)
            (consumed if operation["action"] == "receive" else emitted).append(event)
    return consumed, emitted


def incompatible_changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    old_root: Mapping[str, Any] | None = None,
    new_root: Mapping[str, Any] | None = None,
) -> list[str]:
    """How ``new`` breaks readers of ``old``; empty when it only adds optional fields.

    Documentation (titles, descriptions, examples) may change. Anything else (a field
    removed, made required or optional, retyped, constrained differently) is reported with
    the path of the field. References resolve against ``old_root`` and ``new_root`` (by
    default, the schemas themselves).
    """
    return list(_differences(old, new, old_root or old, new_root or new, "$", frozenset()))


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    seen: set[str] = set()
    while "$ref" in node:
        reference = str(node["$ref"])
        if reference in seen or not reference.startswith("#/"):
            raise ValueError(f"cannot resolve {reference!r}")
        seen.add(reference)
        target: Any = root
        for part in reference[2:].split("/"):
            target = target[unquote(part).replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _differences(
    old: Any,
    new: Any,
    old_root: Mapping[str, Any],
    new_root: Mapping[str, Any],
    where: str,
    visiting: frozenset[tuple[int, int]],
) -> Iterator[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        old, new = _resolve(old_root, old), _resolve(new_root, new)
        pair = (id(old), id(new))
        if pair in visiting:  # a recursive model: this pair is being compared already
            return
        visiting = visiting | {pair}
        yield from _object_differences(old, new, old_root, new_root, where, visiting)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            yield f"{where}: {old!r} became {new!r}"
            return
        for index, (old_item, new_item) in enumerate(zip(old, new, strict=True)):
            yield from _differences(
                old_item, new_item, old_root, new_root, f"{where}[{index}]", visiting
            )
    elif old != new:
        yield f"{where}: {old!r} became {new!r}"


def _object_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    old_root: Mapping[str, Any],
    new_root: Mapping[str, Any],
    where: str,
    visiting: frozenset[tuple[int, int]],
) -> Iterator[str]:
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(new_required - old_required):
        yield f"{where}.{name}: became required"
    for name in sorted(old_required - new_required):
        yield f"{where}.{name}: no longer required"
    old_fields, new_fields = old.get("properties", {}), new.get("properties", {})
    for name in old_fields:
        if name not in new_fields:
            yield f"{where}.{name}: removed"
        else:
            yield from _differences(
                old_fields[name], new_fields[name], old_root, new_root, f"{where}.{name}", visiting
            )
    keys = (set(old) | set(new)) - _DOC_KEYS - {"required", "properties", "$defs"}
    for key in sorted(keys):
        if key not in old or key not in new:
            yield f"{where}: {key!r} {'added' if key in new else 'removed'}"
        else:
            yield from _differences(
                old[key], new[key], old_root, new_root, f"{where}<{key}>", visiting
            )
