"""Contracts on file: each service's AsyncAPI document, each event's schema per version, and
the rules that say whether two schemas of one event are compatible."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from faststream.specification import AsyncAPI

from ._envelope import EventPayload

if TYPE_CHECKING:
    from ._app import SagaService

DOCUMENTED_SERVER = "amqp://localhost:5672/"
"""The server the committed documents name: where a service really connects (host, virtual
host) is deployment, not contract, and would make them differ from one machine to the next."""

# Keys that explain a schema without changing what it accepts.
_DOC_KEYS = frozenset({"title", "description", "examples"})


def asyncapi_document(service: SagaService, *, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document FastStream generates for ``service``, as JSON data.

    It lists every event the participant consumes (its subscribers, one queue each) and
    every event it emits (documentation-only publishers the runtime registers), each with
    the schema of its envelope. The server is the one ``service`` was built for: build it
    for ``DOCUMENTED_SERVER`` to get a document that is the same on every machine.
    """
    runtime = service.runtime
    spec = runtime.spec
    document = AsyncAPI(
        service.broker,
        title=runtime.name,
        version=version,
        description=(
            f"The {runtime.name} participant of the {spec.saga_type} saga, on the topic "
            f"exchange {spec.exchange!r}: routing key = event type."
        ),
        identifier=f"urn:sagakit:{spec.saga_type}:{runtime.name}",
        schema_version="3.0.0",
    ).to_specification()
    data: dict[str, Any] = document.to_jsonable()
    return data


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
        channel = _resolve(document, operation["channel"])
        for message_ref in operation.get("messages", []):
            message = _resolve(document, message_ref)
            event = DocumentedEvent(service, channel["address"], message["payload"], document)
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
