"""``saga order``: publish one OrderCreated, and optionally follow the saga to its end."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from order_contracts.events import OrderCreated
from order_contracts.samples import Scenario, sample_order
from order_contracts.spec import ORDER_SAGA
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sagakit import BrokerUnavailable, Envelope, utc_now
from sagakit.broker import queue_name, redacted
from sagakit.client import EventNotRouted, SagaClient, WatchTimeout
from sagakit.observability import flush_tracing, setup_tracing
from sagakit.testing import QueueProbe

from ._common import (
    DEFAULT_URL,
    SagaEnd,
    UrlOption,
    broker_exit_code,
    broker_unavailable_line,
    describe,
    parse_duration,
    parse_item,
)

EXIT_FULFILLED, EXIT_CANCELLED, EXIT_TIMEOUT = 0, 1, 6


def build_order(
    *,
    file: Path | None = None,
    scenario: Scenario | None = None,
    items: list[str] | None = None,
    order_id: str | None = None,
    customer_id: str | None = None,
    email: str | None = None,
    name: str | None = None,
    line1: str | None = None,
    city: str | None = None,
    postal_code: str | None = None,
    country: str | None = None,
    payment_token: str | None = None,
    currency: str | None = None,
) -> OrderCreated:
    """The order to publish: from ``file``, a ``scenario`` or the default, then overrides."""
    if file is not None and scenario is not None:
        raise typer.BadParameter("give --file or --scenario, not both")
    if file is not None:
        base = _read_order_file(file)
    else:
        base = sample_order(scenario or Scenario.FULFILLED).model_dump(mode="json")
    if items:
        base["items"] = [parse_item(item).model_dump(mode="json") for item in items]
    for section, key, value in (
        (None, "order_id", order_id),
        (None, "payment_method", payment_token),
        (None, "currency", currency),
        ("customer", "id", customer_id),
        ("customer", "email", email),
        ("shipping_address", "name", name),
        ("shipping_address", "line1", line1),
        ("shipping_address", "city", city),
        ("shipping_address", "postal_code", postal_code),
        ("shipping_address", "country", country),
    ):
        if value is not None:
            target = base if section is None else base.setdefault(section, {})
            target[key] = value
    try:
        return OrderCreated.model_validate(base)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise typer.BadParameter(f"not a valid order: {problems}") from None


ORDER_ID_PLACEHOLDER = "<new>"
_ENVELOPE_KEYS = frozenset({"event_id", "event_type", "context", "occurred_at", "producer"})


def _read_order_file(path: Path) -> dict[str, Any]:
    """The order.created payload in ``path``: the payload itself, or a whole envelope.

    An envelope's ids and time are not used (each run starts a new saga with a new event
    id, now); an ``order_id`` of ``<new>`` (or none) becomes a new one, so that the same
    file can be sent again without being a duplicate of the first order.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object (an order or its envelope)")
    if "payload" in data and _ENVELOPE_KEYS & set(data):
        event_type = data.get("event_type", ORDER_SAGA.start_event)
        if event_type != ORDER_SAGA.start_event:
            raise typer.BadParameter(
                f"{path} is a {event_type!r} envelope: saga order sends {ORDER_SAGA.start_event!r}"
            )
        data = data["payload"]
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{path}: the envelope's payload must be a JSON object")
    if data.get("order_id") in (None, "", ORDER_ID_PLACEHOLDER):
        data["order_id"] = f"ord-{uuid.uuid4().hex[:12]}"
    return data


def events_table(started: Envelope[Any], events: list[Envelope[Any]]) -> Table:
    """A saga's events in arrival order: type, producer, time since the start, step."""
    table = Table(title=f"saga {started.context.saga_id}")
    table.add_column("#", justify="right")
    table.add_column("event")
    table.add_column("producer")
    table.add_column("at", justify="right")
    table.add_column("step")
    for number, event in enumerate(events, start=1):
        offset = (event.occurred_at - started.occurred_at).total_seconds() * 1000
        table.add_row(
            str(number),
            event.event_type,
            event.producer,
            f"+{offset:.0f} ms",
            describe(event),
        )
    return table


def events_json(started: Envelope[Any], events: list[Envelope[Any]]) -> list[dict[str, Any]]:
    """A saga's events in arrival order, as JSON."""
    return [
        {
            "event_type": event.event_type,
            "event_id": str(event.event_id),
            "producer": event.producer,
            "at_ms": round((event.occurred_at - started.occurred_at).total_seconds() * 1000, 1),
            "step": describe(event) or None,
        }
        for event in events
    ]


async def _require_bound(url: str) -> list[str]:
    """The queues the start event goes to; raises EventNotRouted when none is declared
    (with --wait our own watch queue would take the order, and wait for ever)."""
    queues = [
        queue_name(step.participant, ORDER_SAGA.start_event)
        for step in ORDER_SAGA.steps
        if step.trigger == ORDER_SAGA.start_event
    ]
    probe = QueueProbe(url)
    try:
        counts = {queue: await probe.consumers(queue) for queue in queues}
    finally:
        await probe.close()
    if all(count is None for count in counts.values()):
        raise EventNotRouted(
            f"nothing is bound to {ORDER_SAGA.start_event!r} on exchange "
            f"{ORDER_SAGA.exchange!r} at {redacted(url)} (no queue {', '.join(queues)}): "
            "start the services first (README: Running a service on its own, or saga demo)"
        )
    return [queue for queue, count in counts.items() if count == 0]


async def publish_order(
    order: OrderCreated,
    *,
    url: str,
    deadline: timedelta | None,
    wait: bool,
    wait_seconds: float,
    console: Console,
    as_json: bool = False,
) -> int:
    """Publish ``order``; with ``wait``, print its events and return the exit code."""
    when = utc_now() + deadline if deadline is not None else None
    async with SagaClient(url, ORDER_SAGA) as client:
        if not wait:
            started = await client.start(order, deadline=when)
            if as_json:
                console.print_json(
                    data={
                        "saga_id": str(started.context.saga_id),
                        "event_id": str(started.event_id),
                        "order_id": order.order_id,
                    }
                )
            else:
                console.print(str(started.context.saga_id), highlight=False)
            return EXIT_FULFILLED
        idle = await _require_bound(url)
        if idle and not as_json:
            Console(stderr=True).print(
                f"note: nothing consumes from {', '.join(idle)} yet; the order waits there",
                highlight=False,
            )
        async with client.watch() as watch:
            started = await client.start(order, deadline=when)
            saga_id = started.context.saga_id
            try:
                events = await watch.wait_for_end(saga_id, timeout=wait_seconds)
            except WatchTimeout as exc:
                seen = exc.seen.get(saga_id, [])
                if as_json:
                    console.print_json(
                        data={
                            "saga_id": str(saga_id),
                            "outcome": "pending",
                            "events": events_json(started, seen),
                        }
                    )
                else:
                    console.print(events_table(started, seen))
                    console.print(f"[yellow]pending[/]: no terminal event within {wait_seconds:g}s")
                return EXIT_TIMEOUT
    end = SagaEnd.read(started, events)
    if as_json:
        console.print_json(
            data={
                "saga_id": str(saga_id),
                "outcome": end.outcome,
                "failed_step": end.failed_step,
                "reason": end.reason,
                "duration_ms": round(end.duration_ms or 0.0, 1),
                "events": events_json(started, events),
            }
        )
        return EXIT_FULFILLED if end.outcome == "fulfilled" else EXIT_CANCELLED
    console.print(events_table(started, events))
    if end.outcome == "fulfilled":
        console.print(f"[green]fulfilled[/] in {end.duration_ms:.0f} ms")
        return EXIT_FULFILLED
    console.print(
        f"[red]cancelled[/] at {end.failed_step} ({end.reason}) in {end.duration_ms:.0f} ms"
    )
    return EXIT_CANCELLED


def order_command(
    item: Annotated[
        list[str] | None,
        typer.Option(
            "--item",
            help="SKU:QTY:PRICE, repeatable (default: one line of SKU-APPLE).",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="An order as JSON: the order.created payload or its whole envelope "
            '(ids and time are renewed; an order_id of "<new>" becomes a new one).',
            exists=True,
        ),
    ] = None,
    scenario: Annotated[
        Scenario | None,
        typer.Option("--scenario", help="A ready-made order that ends this way."),
    ] = None,
    order_id: Annotated[str | None, typer.Option(help="Default: a new one.")] = None,
    customer_id: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(help="Recipient name.")] = None,
    line1: Annotated[str | None, typer.Option(help="Street address.")] = None,
    city: Annotated[str | None, typer.Option()] = None,
    postal_code: Annotated[str | None, typer.Option()] = None,
    country: Annotated[str | None, typer.Option(help="ISO 3166 alpha-2, e.g. DE.")] = None,
    payment_token: Annotated[
        str | None, typer.Option(help="tok_visa approves, tok_declined is declined.")
    ] = None,
    currency: Annotated[str | None, typer.Option(help="ISO 4217, e.g. EUR.")] = None,
    deadline: Annotated[
        str | None, typer.Option(help="Fail forward work after this long: 30s, 5m, 2h.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the saga to its end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.", min=0.1)] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Publish one OrderCreated and print its saga id.

    With --wait, follow the saga to its terminal event and print its events in order; the
    exit code is then 0 when the order was fulfilled, 1 when it was cancelled (or nothing
    consumes orders), 6 on timeout; 2 a usage error, 3 no broker, 4 login or vhost refused.
    """
    order = build_order(
        file=file,
        scenario=scenario,
        items=item,
        order_id=order_id,
        customer_id=customer_id,
        email=email,
        name=name,
        line1=line1,
        city=city,
        postal_code=postal_code,
        country=country,
        payment_token=payment_token,
        currency=currency,
    )
    lifetime = parse_duration(deadline) if deadline is not None else None
    console, errors = Console(), Console(stderr=True)
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, the saga's trace starts here: a root span whose
    # trace id is the saga id, parent of the start event's publish.
    setup_tracing("saga-cli")
    try:
        code = asyncio.run(
            publish_order(
                order,
                url=url,
                deadline=lifetime,
                wait=wait,
                wait_seconds=timeout,
                console=console,
                as_json=as_json,
            )
        )
    except BrokerUnavailable as exc:
        errors.print(broker_unavailable_line(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(broker_exit_code(exc)) from None
    except EventNotRouted as exc:
        errors.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        flush_tracing()
    raise typer.Exit(code)
