"""One name per participant: the settings' prefix and the service's name follow from it, a
mismatch is refused at start-up, and ``saga check --with-services`` finds services without
a package-name pattern."""

from __future__ import annotations

import pytest
from order_contracts import ORDER_SAGA
from payment_service.handlers import create_participant
from payment_service.settings import PaymentSettings
from sagakit import Participant, ParticipantSettings, SpecError, build_service
from sagakit.cli._check import service_factories
from shipping_service.settings import ShippingSettings


def test_the_settings_prefix_and_service_name_come_from_the_participant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYMENT_PREFETCH", "7")
    monkeypatch.setenv("LOAN_DESK_PREFETCH", "9")

    assert PaymentSettings.service_name == "payment"
    assert PaymentSettings().prefetch == 7
    named = ParticipantSettings.named("loan_desk")
    assert (named.__name__, named.service_name) == ("LoanDeskSettings", "loan_desk")
    assert named().prefetch == 9
    assert named().database_url.endswith("/var/loan_desk.db")
    assert ParticipantSettings.model_config.get("env_prefix", "") == ""


def test_settings_of_another_participant_are_refused_at_start_up(tmp_path: object) -> None:
    # Mistake: the name written three times, nothing checking they agree.
    participant = create_participant(PaymentSettings())

    with pytest.raises(SpecError) as refused:
        build_service(participant, ShippingSettings(), configure_logs=False)

    assert str(refused.value) == (
        "ShippingSettings are the settings of 'shipping', not of the participant 'payment': "
        "name one participant in both (class ShippingSettings(ParticipantSettings, "
        "participant='payment'))"
    )


def test_a_participant_without_settings_of_its_own_gets_its_named_ones() -> None:
    participant = Participant("notification", spec=ORDER_SAGA)

    @participant.on_step("confirm_order")
    async def confirm(event: object, step: object) -> None: ...

    @participant.on_reaction("send_cancellation_notice")
    async def notice(event: object, step: object) -> None: ...

    service = build_service(participant, configure_logs=False)

    assert type(service.settings).__name__ == "NotificationSettings"
    assert service.settings.service_name == "notification"


def test_a_reaction_is_registered_by_its_name() -> None:
    notification = Participant("notification", spec=ORDER_SAGA)

    with pytest.raises(
        SpecError,
        match=r"no reaction 'order.cancelled' \(its reactions: "
        r"send_cancellation_notice\)",
    ):
        notification.on_reaction("order.cancelled")


def test_services_are_found_by_entry_point_or_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The order services declare entry points (sagakit.services) in their pyproject.toml.
    assert service_factories(ORDER_SAGA)["payment"] == "payment_service.main:create_service"

    monkeypatch.setenv("SAGA_SERVICES", "payment=billing.app:build, shipping=ship.main:make")

    found = service_factories(ORDER_SAGA)
    assert (found["payment"], found["shipping"]) == ("billing.app:build", "ship.main:make")
    assert found["inventory"] == "inventory_service.main:create_service"
    pattern = service_factories(ORDER_SAGA, factory="svc_{participant}:app")
    assert pattern["inventory"] == "svc_inventory:app"
