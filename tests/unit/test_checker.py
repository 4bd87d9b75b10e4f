"""The choreography checker: silent on the reference flow, precise on each kind of gap."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, ClassVar

import pytest
import typer
from order_contracts import ORDER_SAGA, OrderEvent
from sagakit import EventPayload, Participant, ReactionSpec, SagaSpec, SpecError, StepContext
from sagakit.cli import app, load_plugins
from sagakit.runtime import Subscription
from sagakit.spec import Gap, GapKind, all_paths, check_choreography
from sagakit.spec._checker import Move
from typer.testing import CliRunner


class OrderConfirmed(OrderEvent):
    event_type: ClassVar[str] = "order.confirmed"


class OrderUnconfirmed(OrderEvent):
    event_type: ClassVar[str] = "order.unconfirmed"


class RefundRequested(OrderEvent):
    event_type: ClassVar[str] = "order.refund_requested"


def respec(**changes: Any) -> SagaSpec:
    """ORDER_SAGA with some fields replaced (validated like any spec)."""
    fields = {name: getattr(ORDER_SAGA, name) for name in SagaSpec.model_fields}
    return SagaSpec(**{**fields, **changes})


def with_step(name: str, **changes: Any) -> dict[str, Any]:
    steps = tuple(s.model_copy(update=changes) if s.name == name else s for s in ORDER_SAGA.steps)
    return {"steps": steps}


def with_events(*models: type[EventPayload], without: str | None = None) -> dict[str, Any]:
    events = {k: v for k, v in ORDER_SAGA.events.items() if k != without}
    events.update({m.event_type: m for m in models})
    return {"events": events}


def subscriptions_of(spec: SagaSpec) -> list[Subscription]:
    """Subscriptions of real Participants built on ``spec``, with handlers that never run."""

    async def handler(event: Any, step: StepContext) -> Any:
        raise AssertionError("not called by the checker")

    subs: list[Subscription] = []
    for name in spec.participants():
        participant = Participant(name, spec=spec)
        for step in spec.steps:
            if step.participant == name:
                participant.on_step(step.name)(handler)
                if step.has_compensation:
                    participant.on_compensation(step.name)(handler)
        for reaction in spec.reactions:
            if reaction.participant == name:
                participant.on_reaction(reaction.name)(handler)
        subs.extend(participant.subscriptions())
    return subs


def test_the_reference_flow_has_no_gap() -> None:
    assert check_choreography(ORDER_SAGA) == []


def test_the_reference_flow_and_its_participants_subscriptions_have_no_gap() -> None:
    assert check_choreography(ORDER_SAGA, subscriptions_of(ORDER_SAGA)) == []


def test_an_event_without_a_model() -> None:
    spec = respec(**with_events(without="notification.failed"))

    assert check_choreography(spec) == [
        Gap(
            GapKind.UNREGISTERED_EVENT,
            "notification.failed (failure of step confirm_order) has no payload model "
            "registered in the spec's events",
        )
    ]


def test_a_step_not_undone_on_the_next_steps_failure() -> None:
    # Undoing only when charge_payment is compensated: a declined card leaves stock reserved.
    spec = respec(**with_step("reserve_stock", compensate_on=("payment.refunded",)))

    assert check_choreography(spec) == [
        Gap(
            GapKind.MISSING_COMPENSATION,
            "step reserve_stock (inventory) has an effect to undo, but its compensate_on leaves "
            "out payment.failed, the failure of the later step charge_payment: add it, or "
            "leave compensate_on out to have it derived",
        ),
        Gap(
            GapKind.NEVER_CONSUMED,
            "payment produces payment.failed (failure of step charge_payment), but no "
            "participant consumes it",
        ),
        Gap(
            GapKind.BROKEN_PATH,
            "after a failure at charge_payment, the backward path never reaches "
            "order.cancelled: it stops at payment.failed, which no one consumes; never undoes "
            "reserve_stock (inventory)",
        ),
    ]


def test_a_step_not_undone_on_the_next_steps_compensation() -> None:
    spec = respec(**with_step("reserve_stock", compensate_on=("payment.failed",)))

    gaps = check_choreography(spec)

    assert [g for g in gaps if g.kind is GapKind.MISSING_COMPENSATION] == [
        Gap(
            GapKind.MISSING_COMPENSATION,
            "step reserve_stock (inventory) has an effect to undo, but its compensate_on leaves "
            "out payment.refunded, the compensated event of the later step charge_payment: add "
            "it, or leave compensate_on out to have it derived",
        )
    ]
    # What it costs: every failure after the charge stops at the refund.
    assert [g.message for g in gaps if g.kind is GapKind.BROKEN_PATH] == [
        f"after a failure at {step}, the backward path never reaches order.cancelled: it stops "
        "at payment.refunded, which no one consumes; never undoes reserve_stock (inventory)"
        for step in ("ship_order", "confirm_order")
    ]
    assert [g.kind for g in gaps] == [
        GapKind.MISSING_COMPENSATION,
        GapKind.NEVER_CONSUMED,
        GapKind.BROKEN_PATH,
        GapKind.BROKEN_PATH,
    ]


def test_an_event_consumed_but_never_produced() -> None:
    refund_notice = ReactionSpec(
        name="send_refund_notice", participant="notification", trigger="order.refund_requested"
    )
    spec = respec(reactions=(*ORDER_SAGA.reactions, refund_notice), **with_events(RefundRequested))

    assert check_choreography(spec) == [
        Gap(
            GapKind.NEVER_PRODUCED,
            "notification consumes order.refund_requested (trigger of reaction "
            "send_refund_notice), but no participant produces it",
        )
    ]


def test_an_event_produced_but_never_consumed() -> None:
    # confirm_order announces its own event instead of the completed one.
    spec = respec(
        **with_step("confirm_order", success="order.confirmed"), **with_events(OrderConfirmed)
    )

    assert check_choreography(spec) == [
        Gap(
            GapKind.NEVER_CONSUMED,
            "notification produces order.confirmed (success of step confirm_order), but no "
            "participant consumes it",
        ),
        Gap(
            GapKind.BROKEN_PATH,
            "the forward path never reaches order.fulfilled: it stops at order.confirmed, "
            "which no one consumes",
        ),
    ]


def test_terminal_events_and_the_first_steps_own_events_need_no_consumer() -> None:
    # order.fulfilled, inventory.reservation_failed and inventory.released are consumed by
    # no one in the reference flow: each ends a path (the last two beside order.cancelled).
    assert not any(g.kind is GapKind.NEVER_CONSUMED for g in check_choreography(ORDER_SAGA))


def test_a_forward_path_that_never_ends() -> None:
    # Consumed, so no event is left alone, but nothing leads on to order.fulfilled.
    thank_you = ReactionSpec(
        name="send_thank_you", participant="notification", trigger="order.confirmed"
    )
    spec = respec(
        reactions=(*ORDER_SAGA.reactions, thank_you),
        **with_step("confirm_order", success="order.confirmed"),
        **with_events(OrderConfirmed),
    )

    assert check_choreography(spec) == [
        Gap(
            GapKind.BROKEN_PATH,
            "the forward path never reaches order.fulfilled: it stops at order.confirmed, "
            "after which nothing is emitted",
        )
    ]


def test_a_backward_path_out_of_order() -> None:
    # inventory also listens to shipment.failed: stock is released before the refund.
    spec = respec(
        **with_step(
            "reserve_stock",
            compensate_on=("payment.failed", "payment.refunded", "shipment.failed"),
        )
    )

    assert check_choreography(spec) == [
        Gap(
            GapKind.BROKEN_PATH,
            "after a failure at ship_order, the backward path undoes reserve_stock, "
            "charge_payment, which is not the reverse order (charge_payment, reserve_stock)",
        )
    ]


def test_a_first_step_without_an_effect_leaves_the_cancellation_to_the_next_one() -> None:
    # A first step that only validates: nothing to undo. Who ends the saga is sagakit's
    # business: the failing step when nothing before it has a compensation, else the
    # earliest step with one, once undone.
    steps = tuple(
        s.model_copy(update={"compensated": None, "compensate_on": ()})
        if s.name == "reserve_stock"
        else s.model_copy(update={"compensate_on": ()})
        for s in ORDER_SAGA.steps
    )
    spec = respec(steps=steps)

    assert check_choreography(spec) == []
    assert [s.name for s in spec.steps if spec.ends_backward_path(s)] == [
        "reserve_stock",
        "charge_payment",
    ]
    cancels = {
        (hop.participant, hop.source)
        for path in all_paths(spec)
        for hop in path.hops
        if hop.move is Move.CANCEL
    }
    assert cancels == {
        ("inventory", "inventory.reservation_failed"),
        ("payment", "payment.failed"),
        ("payment", "payment.refunded"),
    }


def test_compensate_on_is_derived_from_the_step_order() -> None:
    # Nobody writes compensate_on in the order flow: each one comes from the step order.
    assert {s.name: s.compensate_on for s in ORDER_SAGA.steps} == {
        "reserve_stock": ("payment.failed", "payment.refunded"),
        "charge_payment": ("shipment.failed", "shipment.cancelled"),
        "ship_order": ("notification.failed",),
        "confirm_order": (),
    }


def test_a_step_between_without_a_compensation_passes_failures_back() -> None:
    # shipping has nothing to undo: payment is undone on shipping's failure and on
    # notification's, and the path still ends once inventory is undone.
    spec = respec(
        steps=tuple(
            s.model_copy(update={"compensated": None, "compensate_on": ()})
            if s.name == "ship_order"
            else s.model_copy(update={"compensate_on": ()})
            for s in ORDER_SAGA.steps
        )
    )

    assert spec.step("charge_payment").compensate_on == ("shipment.failed", "notification.failed")
    assert check_choreography(spec) == []


def test_the_last_step_cannot_declare_a_compensation_nothing_triggers() -> None:
    with pytest.raises(SpecError, match="no later step can fail, so nothing would ever undo it"):
        respec(**with_step("confirm_order", compensated="shipment.cancelled"))


def test_a_trigger_no_service_subscribes_to() -> None:
    # payment was built on an older spec that did not undo the charge on shipment.cancelled.
    older = respec(**with_step("charge_payment", compensate_on=("shipment.failed",)))

    assert check_choreography(ORDER_SAGA, subscriptions_of(older)) == [
        Gap(
            GapKind.UNSUBSCRIBED_TRIGGER,
            "the spec has payment consume shipment.cancelled (compensation of step "
            "charge_payment), but the payment service does not subscribe to it",
        )
    ]


def test_a_subscription_the_spec_does_not_name() -> None:
    newer = respec(
        reactions=(
            *ORDER_SAGA.reactions,
            ReactionSpec(
                name="send_payment_receipt", participant="notification", trigger="payment.processed"
            ),
        )
    )

    assert check_choreography(ORDER_SAGA, subscriptions_of(newer)) == [
        Gap(
            GapKind.UNDECLARED_SUBSCRIPTION,
            "the notification service subscribes to payment.processed (reaction "
            "send_payment_receipt), which the spec does not give it",
        )
    ]


def test_a_missing_service_leaves_each_of_its_triggers_unsubscribed() -> None:
    subs = [s for s in subscriptions_of(ORDER_SAGA) if s.participant != "shipping"]

    gaps = check_choreography(ORDER_SAGA, subs)

    assert [g.kind for g in gaps] == [GapKind.UNSUBSCRIBED_TRIGGER] * 2
    assert [g.message.split(" (")[0] for g in gaps] == [
        "the spec has shipping consume payment.processed",
        "the spec has shipping consume notification.failed",
    ]


@pytest.fixture
def saga() -> typer.Typer:
    """The ``saga`` script's app, with every command registered as the script has it."""
    load_plugins()
    return app


def test_saga_check_reports_no_gap_on_the_reference_flow_and_its_services(
    saga: typer.Typer,
) -> None:
    result = CliRunner().invoke(
        saga, ["check", "--spec", "order_contracts:ORDER_SAGA", "--with-services"]
    )

    assert result.exit_code == 0, result.output
    assert result.output == (
        "order_fulfilment: no gap (the spec and the subscriptions of inventory, payment, "
        "shipping, notification)\n"
    )


def test_saga_check_lists_the_gaps_and_fails(
    saga: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = ModuleType("broken_flow")
    flow.SPEC = respec(**with_step("reserve_stock", compensate_on=("payment.refunded",)))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "broken_flow", flow)

    result = CliRunner().invoke(saga, ["check", "--spec", "broken_flow:SPEC"])

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "order_fulfilment: 3 gaps (the spec)"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "- missing_compensation",
        "- never_consumed",
        "- broken_path",
    ]
