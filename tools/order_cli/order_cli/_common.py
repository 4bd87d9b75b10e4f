"""What the order flow's commands share: option parsing, broker URL, reading a saga's end."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import typer
from order_contracts.events import OrderCancelled, OrderLine
from order_contracts.spec import ORDER_SAGA
from pydantic import ValidationError
from sagakit import BrokerUnavailable, Envelope, StepRecord
from sagakit.cli import error_line

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar=["RABBITMQ_URL", "RABBITMQ_URLS"],
        help="The RabbitMQ broker (a cluster's nodes: host1:5672,host2:5672 in the URL).",
    ),
]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}

# The events that append their own step record to the context (successes, failures and
# compensations); the start event and the cancellation add none.
_STEP_EVENTS = frozenset(
    event
    for step in ORDER_SAGA.steps
    for event in (step.success, step.failure, step.compensated)
    if event is not None
)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``5m``, ``1.5h`` or plain seconds (``45``) as a positive timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 30s, 5m or 2h")
    amount, unit = match.groups()
    seconds = float(amount) * _UNIT_SECONDS[unit]
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r}: a duration must be positive")
    return timedelta(seconds=seconds)


def parse_item(text: str) -> OrderLine:
    """``SKU:QTY:PRICE`` (e.g. ``SKU-APPLE:2:1.50``) as an order line."""
    parts = text.split(":")
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise typer.BadParameter(f"{text!r} is not SKU:QTY:PRICE, e.g. SKU-APPLE:2:1.50")
    sku, quantity, price = (part.strip() for part in parts)
    try:
        return OrderLine.model_validate({"sku": sku, "quantity": quantity, "unit_price": price})
    except ValidationError as exc:
        problems = "; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors())
        raise typer.BadParameter(f"{text!r}: {problems}") from None


def broker_unavailable_line(error: BrokerUnavailable) -> str:
    """The one line printed when no broker answers (how to start one) or it refuses us."""
    return error_line(error)[0]


def broker_exit_code(error: BrokerUnavailable) -> int:
    """3 when no broker answers, 4 when it refuses the login or the virtual host."""
    return error_line(error)[1]


@dataclass(frozen=True, slots=True)
class SagaEnd:
    """How one saga ended, read from its events."""

    saga_id: uuid.UUID
    outcome: str  # fulfilled | cancelled | pending
    failed_step: str | None
    reason: str | None
    events: tuple[Envelope[Any], ...]
    duration_ms: float | None

    @classmethod
    def read(cls, started: Envelope[Any], events: list[Envelope[Any]]) -> SagaEnd:
        """The end of the saga that ``started`` began, given its events in arrival order."""
        last = events[-1] if events else None
        outcome, failed_step, reason, duration = "pending", None, None, None
        if last is not None and last.event_type in ORDER_SAGA.terminal_events():
            duration = (last.occurred_at - started.occurred_at).total_seconds() * 1000
            if last.event_type == ORDER_SAGA.completed_event:
                outcome = "fulfilled"
            else:
                outcome = "cancelled"
                if isinstance(last.payload, OrderCancelled):
                    failed_step, reason = last.payload.failed_step, last.payload.reason
        return cls(
            saga_id=started.context.saga_id,
            outcome=outcome,
            failed_step=failed_step,
            reason=reason,
            events=tuple(events),
            duration_ms=duration,
        )


def own_record(envelope: Envelope[Any]) -> StepRecord | None:
    """The step record that ``envelope`` appended to the saga's history, if any."""
    if envelope.event_type in _STEP_EVENTS and envelope.context.steps:
        return envelope.context.steps[-1]
    return None


def describe(envelope: Envelope[Any]) -> str:
    """What an event says about its step: ``charge_payment failed (card_declined)``."""
    if isinstance(envelope.payload, OrderCancelled):
        return f"cancelled: {envelope.payload.failed_step} ({envelope.payload.reason})"
    record = own_record(envelope)
    if record is None:
        return ""
    text = f"{record.step} {record.outcome.value}"
    return f"{text} ({record.reason})" if record.reason else text
