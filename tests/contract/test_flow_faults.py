"""Every failure kind at every step and in every compensation, in memory: the four reference
services on ``FlowHarness``, which retries at once and probes each participant's state."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from inventory_service.main import create_service as create_inventory
from inventory_service.settings import InventorySettings
from inventory_service.tables import Reservation
from notification_service.main import create_service as create_notification
from notification_service.settings import NotificationSettings
from order_contracts import ORDER_SAGA
from order_contracts.samples import sample_order
from payment_service.main import create_service as create_payment
from payment_service.settings import PaymentSettings
from payment_service.tables import Payment
from sagakit import SagaService
from sagakit.testing import (
    EffectProbe,
    Fault,
    FlowHarness,
    Injection,
    ParticipantHarness,
    assert_all_or_nothing,
)
from shipping_service.main import create_service as create_shipping
from shipping_service.settings import ShippingSettings
from shipping_service.tables import Shipment
from sqlalchemy import func, select
from sqlalchemy.orm import DeclarativeBase

STEPS = [step.name for step in ORDER_SAGA.steps]
UNDONE = [step.name for step in ORDER_SAGA.steps if step.has_compensation]


@pytest.fixture
def services(tmp_path: Path) -> list[SagaService]:
    def db(name: str) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/{name}.db"

    return [
        create_inventory(InventorySettings(database_url=db("inventory"))),
        create_payment(PaymentSettings(database_url=db("payment"))),
        create_shipping(ShippingSettings(database_url=db("shipping"))),
        create_notification(NotificationSettings(database_url=db("notification"))),
    ]


def holding(table: type[DeclarativeBase], status: str) -> EffectProbe:
    """How many rows of ``table`` hold ``status`` for the saga."""

    async def probe(service: SagaService, saga_id: uuid.UUID) -> object:
        column = table.__table__.c
        query = select(func.count()).where(column.saga_id == str(saga_id), column.status == status)
        async with service.store.transaction() as session:
            return (await session.execute(query)).scalar_one()

    return probe


EFFECTS: dict[str, EffectProbe] = {
    "inventory": holding(Reservation, "active"),
    "payment": holding(Payment, "captured"),
    "shipping": holding(Shipment, "booked"),
}


@pytest.mark.parametrize("fault", list(Fault))
@pytest.mark.parametrize("fail_at", STEPS)
async def test_a_failure_of_every_kind_at_every_step_leaves_nothing_behind(
    services: list[SagaService], fail_at: str, fault: Fault
) -> None:
    # A transient error or a timeout on every attempt exhausts the retries: the step fails.
    run = await assert_all_or_nothing(
        services, sample_order(), fail_at=fail_at, fault=fault, effects=EFFECTS
    )

    reason = run.of_type(ORDER_SAGA.cancelled_event)[0].payload.reason
    assert reason == ("injected" if fault is Fault.BUSINESS else "retries_exhausted")
    assert run.effects == dict.fromkeys(EFFECTS, 0)


@pytest.mark.parametrize("fault", [Fault.TRANSIENT, Fault.TIMEOUT])
@pytest.mark.parametrize("fail_at", STEPS)
async def test_a_failure_that_passes_is_retried_and_the_saga_completes(
    services: list[SagaService], fail_at: str, fault: Fault
) -> None:
    async with FlowHarness(services, effects=EFFECTS) as flow:
        run = await flow.run(sample_order(), fail_at=fail_at, fault=fault, times=2)

    run.assert_all_or_nothing()
    assert run.failed_step is None
    assert run.event_types[-1] == ORDER_SAGA.completed_event
    assert run.effects == dict.fromkeys(EFFECTS, 1)


@pytest.mark.parametrize("fault", [Fault.TRANSIENT, Fault.TIMEOUT])
@pytest.mark.parametrize("undo", UNDONE)
async def test_a_compensation_that_fails_for_a_while_still_undoes_everything(
    services: list[SagaService], undo: str, fault: Fault
) -> None:
    async with FlowHarness(services, effects=EFFECTS) as flow:
        run = await flow.run(
            sample_order(),
            fail_at="confirm_order",
            inject=[Injection(undo, fault, times=2, compensation=True)],
        )

    run.assert_all_or_nothing()
    assert run.failed_step == "confirm_order"
    assert run.effects == dict.fromkeys(EFFECTS, 0)


@pytest.mark.parametrize("undo", UNDONE)
async def test_a_compensation_that_keeps_failing_is_parked_and_the_saga_does_not_end(
    services: list[SagaService], undo: str
) -> None:
    async with FlowHarness(services, effects=EFFECTS) as flow:
        run = await flow.run(
            sample_order(),
            fail_at="confirm_order",
            inject=[Injection(undo, Fault.TRANSIENT, compensation=True)],
        )

    assert not run.ended
    assert [p.reason.split(":")[0] for p in run.parked] == ["compensation_failed"]
    with pytest.raises(AssertionError, match="parked"):
        run.assert_all_or_nothing()


async def test_the_effect_probes_catch_a_compensation_that_undoes_nothing(
    services: list[SagaService],
) -> None:
    inventory = services[0]
    (release,) = [s for s in inventory.runtime.subscriptions if s.kind.value == "compensation"][:1]

    async def forgets(done: object, step: object) -> object:
        return ORDER_SAGA.model_for("inventory.released").model_validate(
            {"order": done.order.model_dump(mode="json")}  # type: ignore[attr-defined]
        )

    for sub in inventory.runtime.subscriptions:
        if sub.kind.value == "compensation":
            object.__setattr__(sub, "handler", forgets)
    async with FlowHarness(services, effects=EFFECTS) as flow:
        run = await flow.run(sample_order(), fail_at="charge_payment")

    assert release.name == "reserve_stock"
    with pytest.raises(AssertionError, match="inventory still holds 1 for the cancelled saga"):
        run.assert_all_or_nothing()


async def test_a_spec_aware_event_fills_producer_step_and_outcome(tmp_path: Path) -> None:
    shipping = create_shipping(
        ShippingSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/shipping.db")
    )
    async with ParticipantHarness(shipping) as harness:
        created = harness.start_saga(sample_order())
        reserved = harness.event("inventory.reserved", after=created, reservation_id="r-1")
        charged = harness.event(
            "payment.processed",
            after=reserved,
            payment_id="p-1",
            amount=Decimal("10.00"),
            currency="EUR",
        )
        await harness.publish(charged)

    assert charged.producer == "payment"
    assert [(r.step, r.participant, r.outcome.value) for r in charged.context.steps] == [
        ("reserve_stock", "inventory", "completed"),
        ("charge_payment", "payment", "completed"),
    ]
    assert charged.payload.order == reserved.payload.order  # the carried order, filled in
    assert harness.emitted_types == ["shipment.created"]
