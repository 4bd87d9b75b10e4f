"""All or nothing, end to end in memory: the four reference services together, a failure
injected at each step in turn (``sagakit.testing.FlowHarness``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from inventory_service.main import create_service as create_inventory
from inventory_service.settings import InventorySettings
from notification_service.main import create_service as create_notification
from notification_service.settings import NotificationSettings
from order_contracts import ORDER_SAGA
from order_contracts.samples import EXPECTED_FAILED_STEP, Scenario, sample_order
from payment_service.main import create_service as create_payment
from payment_service.settings import PaymentSettings
from sagakit import SagaService, StepOutcome
from sagakit.testing import INJECTED_REASON, FlowHarness, assert_all_or_nothing
from shipping_service.main import create_service as create_shipping
from shipping_service.settings import ShippingSettings

STEPS = [step.name for step in ORDER_SAGA.steps]


@pytest.fixture
def services(tmp_path: Path) -> list[SagaService]:
    """The four reference services, each on a throwaway SQLite database of its own."""

    def db(name: str) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/{name}.db"

    return [
        create_inventory(InventorySettings(database_url=db("inventory"))),
        create_payment(PaymentSettings(database_url=db("payment"))),
        create_shipping(ShippingSettings(database_url=db("shipping"))),
        create_notification(NotificationSettings(database_url=db("notification"))),
    ]


@pytest.fixture
async def flow(services: list[SagaService]) -> AsyncIterator[FlowHarness]:
    async with FlowHarness(services) as running:
        yield running


async def test_the_forward_path_ends_in_order_fulfilled(services: list[SagaService]) -> None:
    run = await assert_all_or_nothing(services, sample_order())

    assert run.event_types == [
        "inventory.reserved",
        "payment.processed",
        "shipment.created",
        "order.fulfilled",
    ]
    assert run.undone == ()


@pytest.mark.parametrize("fail_at", STEPS)
async def test_a_failure_at_each_step_undoes_every_completed_step(
    services: list[SagaService], fail_at: str
) -> None:
    run = await assert_all_or_nothing(services, sample_order(), fail_at=fail_at)

    failed = STEPS.index(fail_at)
    assert run.undone == tuple(reversed([s for s in STEPS[:failed] if s != "confirm_order"]))
    cancelled = run.of_type("order.cancelled")[0].payload
    assert (cancelled.failed_step, cancelled.reason) == (fail_at, INJECTED_REASON)


async def test_the_injected_failure_touches_only_its_own_saga(flow: FlowHarness) -> None:
    failed = await flow.run(sample_order(), fail_at="ship_order")
    fine = await flow.run(sample_order())

    failed.assert_all_or_nothing()
    fine.assert_all_or_nothing()
    assert fine.of_type("order.fulfilled")


@pytest.mark.parametrize("scenario", [s for s in Scenario if EXPECTED_FAILED_STEP[s] is not None])
async def test_each_real_business_failure_is_all_or_nothing_too(
    flow: FlowHarness, scenario: Scenario
) -> None:
    # No injection: the reference rules themselves refuse the sample order.
    run = await flow.run(sample_order(scenario))

    expected = EXPECTED_FAILED_STEP[scenario]
    history = [(r.step, r.outcome) for r in run.of_type("order.cancelled")[0].context.steps]
    assert (expected, StepOutcome.FAILED) in history
    replace(run, failed_step=expected).assert_all_or_nothing()


async def test_the_check_itself_fails_when_a_completed_step_is_not_undone(
    flow: FlowHarness,
) -> None:
    run = await flow.run(sample_order(), fail_at="ship_order")
    # What a participant that forgot to undo its charge would have produced.
    forgetful = replace(
        run,
        events=tuple(e for e in run.events if e.event_type != "payment.refunded"),
        undone=tuple(s for s in run.undone if s != "charge_payment"),
    )

    with pytest.raises(AssertionError, match="compensations ran as"):
        forgetful.assert_all_or_nothing()


async def test_a_flow_needs_every_participant(services: list[SagaService]) -> None:
    with pytest.raises(ValueError, match="one service per participant"):
        FlowHarness(services[:-1])
