"""Write the broker's definitions file: one RabbitMQ user per service, least privilege.

Everything is derived from the choreography spec and sagakit's naming rules:

* a participant may configure, write and read only the flow's exchange and the names it
  owns, all of which start with ``<participant>.`` (work queues, their ``.retry`` delay
  queues, the ``.retries`` exchange that routes them, the ``.dlx`` exchange and ``.dlq``
  queue); it may never write to the default exchange, which reaches every queue;
* on the flow's topic exchange, topic permissions let it publish only the events it emits
  (its step's success, failure and compensated events, and the cancellation if its step
  is the first) and bind only the events it consumes;
* the tracker observes every event and publishes none; the client (``saga order``) may
  publish only the start event, and watch the flow through an exclusive queue;
* an operator account (management UI, ``saga dlq``) has every right.

The passwords are local-development defaults (``<user>-local-dev``), stored as salted
SHA-256 hashes with a salt derived from the user name, so that the file is reproducible.
They are for a laptop: for anything else pass ``--passwords FILE`` (a JSON object, user
name to password; the salts are then random) and keep the output out of version control.

Usage::

    uv run python deploy/rabbitmq/generate_definitions.py           # rewrite the file
    uv run python deploy/rabbitmq/generate_definitions.py --check   # exit 1 if stale
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagakit import SagaSpec

DEFINITIONS_PATH = Path(__file__).with_name("definitions.json")
DEFAULT_SPEC = "order_contracts:ORDER_SAGA"
DEFAULT_VHOST = "/"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"

OBSERVERS = ("tracker",)
CLIENT_USER = "saga-client"
ADMIN_USER = "saga-admin"

# For topics, a pattern that matches no event type (the tracker may not even write to the
# exchange; this keeps its topic permissions explicit all the same).
NOTHING = "^$"
EVERYTHING = "^.*$"
# A client's exclusive watch queue: aio-pika names it amq_<uuid hex> when given no name,
# the broker amq.gen-<random> when asked to name it.
WATCH_QUEUES = (r"amq_[0-9a-f]{32}", r"amq\.gen-.*")


@dataclass(frozen=True, slots=True)
class BrokerUser:
    """One broker account and what it may do on one virtual host."""

    name: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str
    tags: tuple[str, ...] = ()


def _any_of(patterns: Iterable[str]) -> str:
    return "^(" + "|".join(patterns) + ")$"


def _events(event_types: Iterable[str]) -> str:
    chosen = list(dict.fromkeys(event_types))
    return _any_of(re.escape(e) for e in chosen) if chosen else NOTHING


def _owned(name: str) -> str:
    return re.escape(name) + r"\..*"


def emitted(spec: SagaSpec, participant: str) -> tuple[str, ...]:
    """The event types ``participant`` publishes on the flow's exchange."""
    events: list[str] = []
    for step in spec.steps:
        if step.participant != participant:
            continue
        events += [step.success, step.failure]
        if step.compensated is not None:
            events.append(step.compensated)
        if spec.ends_backward_path(step):
            events.append(spec.cancelled_event)
    return tuple(dict.fromkeys(events))


def consumed(spec: SagaSpec, participant: str) -> tuple[str, ...]:
    """The event types ``participant`` binds its queues to."""
    events: list[str] = []
    for step in spec.steps:
        if step.participant == participant:
            events += [step.trigger, *step.compensate_on]
    events += [r.trigger for r in spec.reactions if r.participant == participant]
    return tuple(dict.fromkeys(events))


def broker_users(spec: SagaSpec, *, observers: Sequence[str] = OBSERVERS) -> list[BrokerUser]:
    """Every account of the flow, participants first, in flow order."""
    exchange = re.escape(spec.exchange)
    users = [
        BrokerUser(
            name=participant,
            configure=_any_of([exchange, _owned(participant)]),
            write=_any_of([exchange, _owned(participant)]),
            read=_any_of([exchange, _owned(participant)]),
            topic_write=_events(emitted(spec, participant)),
            topic_read=_events(consumed(spec, participant)),
        )
        for participant in spec.participants()
    ]
    users += [
        BrokerUser(
            name=observer,
            configure=_any_of([exchange, _owned(observer)]),
            write=_any_of([_owned(observer)]),
            read=_any_of([exchange, _owned(observer)]),
            topic_write=NOTHING,
            topic_read=EVERYTHING,
        )
        for observer in observers
    ]
    client_names = _any_of([exchange, *WATCH_QUEUES])
    users.append(
        BrokerUser(
            name=CLIENT_USER,
            configure=client_names,
            write=client_names,
            read=client_names,
            topic_write=_events([spec.start_event]),
            topic_read=EVERYTHING,
        )
    )
    users.append(
        BrokerUser(
            name=ADMIN_USER,
            configure=".*",
            write=".*",
            read=".*",
            topic_write=EVERYTHING,
            topic_read=EVERYTHING,
            tags=("administrator",),
        )
    )
    return users


def local_dev_password(user: str) -> str:
    """The local-development default password of ``user``; never use it elsewhere."""
    return f"{user}-local-dev"


def password_hash(password: str, *, salt: bytes) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def _fixed_salt(user: str) -> bytes:
    return hashlib.sha256(f"sagakit-local-dev:{user}".encode()).digest()[:4]


def definitions(
    spec: SagaSpec,
    users: Sequence[BrokerUser],
    *,
    vhost: str = DEFAULT_VHOST,
    passwords: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The RabbitMQ definitions document for ``users`` on ``vhost``.

    Args:
        spec: The flow; its exchange is declared by the document.
        users: The accounts, e.g. from ``broker_users``.
        vhost: The virtual host the services use.
        passwords: User name to password; omitted users get their local-development
            default with a reproducible salt, given ones a random salt.
    """
    passwords = passwords or {}

    def hashed(user: str) -> str:
        if user in passwords:
            return password_hash(passwords[user], salt=os.urandom(4))
        return password_hash(local_dev_password(user), salt=_fixed_salt(user))

    return {
        "users": [
            {
                "name": u.name,
                "password_hash": hashed(u.name),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(u.tags),
            }
            for u in users
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {
                "user": u.name,
                "vhost": vhost,
                "configure": u.configure,
                "write": u.write,
                "read": u.read,
            }
            for u in users
        ],
        "topic_permissions": [
            {
                "user": u.name,
                "vhost": vhost,
                "exchange": spec.exchange,
                "write": u.topic_write,
                "read": u.topic_read,
            }
            for u in users
        ],
        "exchanges": [
            {
                "name": spec.exchange,
                "vhost": vhost,
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "queues": [],
        "bindings": [],
        "policies": [],
        "parameters": [],
        "global_parameters": [],
    }


def render(document: Mapping[str, Any]) -> str:
    """The document as the committed file holds it."""
    return json.dumps(document, indent=2) + "\n"


def load_spec(reference: str) -> SagaSpec:
    """The SagaSpec at ``module:ATTRIBUTE``."""
    module_name, _, attribute = reference.partition(":")
    spec = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(spec, SagaSpec):
        raise SystemExit(f"{reference} is not a SagaSpec")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the definitions file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="module:ATTRIBUTE of the SagaSpec")
    parser.add_argument("--vhost", default=DEFAULT_VHOST)
    parser.add_argument("--output", type=Path, default=DEFINITIONS_PATH)
    parser.add_argument("--passwords", type=Path, help="JSON object: user name to password")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    passwords = json.loads(args.passwords.read_text()) if args.passwords else None
    text = render(definitions(spec, broker_users(spec), vhost=args.vhost, passwords=passwords))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
