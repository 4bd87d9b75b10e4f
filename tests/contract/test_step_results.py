"""A compensation receives what its own step produced; steps add to a bounded data bag;
a step registers undos for what it does outside its database, run if it then fails or when
it is compensated (the last step too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from sagakit import (
    BusinessFailure,
    CancelledEvent,
    CompensatedEvent,
    EventPayload,
    FailureEvent,
    HandlerError,
    Participant,
    ParticipantSettings,
    SagaContext,
    SagaService,
    SagaSpec,
    StepContext,
    StepSpec,
    build_service,
)
from sagakit.testing import FlowHarness


class Asked(EventPayload):
    event_type: ClassVar[str] = "gift.asked"
    amount: int


class Held(EventPayload):
    event_type: ClassVar[str] = "desk.held"
    hold_id: str


class HoldFailed(FailureEvent):
    event_type: ClassVar[str] = "desk.failed"


class Released(CompensatedEvent):
    event_type: ClassVar[str] = "desk.released"
    hold_id: str | None = None


class Charged(EventPayload):
    event_type: ClassVar[str] = "card.charged"
    charge_id: str


class ChargeFailed(FailureEvent):
    event_type: ClassVar[str] = "card.failed"


class Refunded(CompensatedEvent):
    event_type: ClassVar[str] = "card.refunded"


class Sent(EventPayload):
    event_type: ClassVar[str] = "gift.sent"


class SendFailed(FailureEvent):
    event_type: ClassVar[str] = "mail.failed"


class Dropped(CancelledEvent):
    event_type: ClassVar[str] = "gift.dropped"


GIFTS = SagaSpec(
    saga_type="gift",
    exchange="gifts",
    start_event="gift.asked",
    completed_event="gift.sent",
    cancelled_event="gift.dropped",
    steps=(
        StepSpec(
            name="hold",
            participant="desk",
            trigger="gift.asked",
            success="desk.held",
            failure="desk.failed",
            compensated="desk.released",
        ),
        StepSpec(
            name="charge",
            participant="card",
            trigger="desk.held",
            success="card.charged",
            failure="card.failed",
            compensated="card.refunded",
        ),
        StepSpec(
            name="send",
            participant="mail",
            trigger="card.charged",
            success="gift.sent",
            failure="mail.failed",
        ),
    ),
    events={
        m.event_type: m
        for m in (
            Asked,
            Held,
            HoldFailed,
            Released,
            Charged,
            ChargeFailed,
            Refunded,
            Sent,
            SendFailed,
            Dropped,
        )
    },
)

# What happened outside the databases: the card gateway and the mail server.
outside: list[str] = []
seen: dict[str, Any] = {}


def services(tmp_path: Path, *, fail: str | None = None) -> list[SagaService]:
    desk = Participant("desk", spec=GIFTS)
    card = Participant("card", spec=GIFTS)
    mail = Participant("mail", spec=GIFTS)

    @desk.on_step("hold")
    async def hold(event: Asked, step: StepContext) -> Held:
        step.add_data(amount=event.amount, desk="d-1")
        return Held(hold_id=f"h-{event.amount}")

    @desk.on_compensation("hold")
    async def release(done: Held, step: StepContext) -> Released:
        seen["release"] = done
        return Released(hold_id=done.hold_id)

    @card.undo
    async def refund(charge_id: str, amount: int) -> None:
        outside.append(f"refund {charge_id} {amount}")

    @card.on_step("charge")
    async def charge(event: Held, step: StepContext) -> Charged:
        charge_id = f"c-{event.hold_id}"
        step.undo(refund, charge_id=charge_id, amount=step.data["amount"])
        outside.append(f"charge {charge_id}")
        if fail == "charge_after_effect":
            raise BusinessFailure("gateway_review", detail="held for review after charging")
        step.add_data(charge_id=charge_id)
        return Charged(charge_id=charge_id)

    @mail.undo
    async def unsend(message_id: str) -> None:
        outside.append(f"unsend {message_id}")

    @mail.on_step("send")
    async def send(event: Charged, step: StepContext) -> Sent:
        seen["send_data"] = dict(step.data)
        step.undo(unsend, message_id="m-1")
        outside.append("send m-1")
        if fail == "send_after_effect":
            raise BusinessFailure("bounced")
        return Sent()

    return [
        build_service(
            p,
            ParticipantSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/{p.name}.db"),
            configure_logs=False,
        )
        for p in (desk, card, mail)
    ]


@pytest.fixture(autouse=True)
def _clear() -> None:
    outside.clear()
    seen.clear()


async def test_the_data_bag_reaches_later_steps(tmp_path: Path) -> None:
    async with FlowHarness(services(tmp_path)) as flow:
        run = await flow.run(Asked(amount=5))

    run.assert_all_or_nothing()
    assert seen["send_data"] == {"amount": 5, "desk": "d-1", "charge_id": "c-h-5"}
    assert run.of_type("gift.sent")[0].context.data == seen["send_data"]
    assert outside == ["charge c-h-5", "send m-1"]


async def test_a_compensation_gets_its_own_steps_payload_and_runs_its_undos(
    tmp_path: Path,
) -> None:
    # send fails after sending: its own undo runs; then charge is compensated by its undo
    # alone (no handler), then hold by its handler, which receives what hold produced.
    async with FlowHarness(services(tmp_path, fail="send_after_effect")) as flow:
        run = await flow.run(Asked(amount=7))

    run.assert_all_or_nothing()
    assert outside == ["charge c-h-7", "send m-1", "unsend m-1", "refund c-h-7 7"]
    assert seen["release"] == Held(hold_id="h-7")
    assert run.of_type("desk.released")[0].payload == Released(hold_id="h-7")
    assert run.event_types[-2:] in (
        ["desk.released", "gift.dropped"],
        ["gift.dropped", "desk.released"],
    )


async def test_a_step_that_fails_after_its_effect_undoes_it(tmp_path: Path) -> None:
    async with FlowHarness(services(tmp_path, fail="charge_after_effect")) as flow:
        run = await flow.run(Asked(amount=3))

    run.assert_all_or_nothing()
    assert outside == ["charge c-h-3", "refund c-h-3 3"]
    assert run.of_type("card.failed")[0].payload.reason == "gateway_review"
    # The data the failed step added is not kept.
    assert "charge_id" not in run.of_type("gift.dropped")[0].context.data


async def test_an_undo_must_be_registered_and_its_arguments_json(tmp_path: Path) -> None:
    _, card, _ = services(tmp_path)
    participant = card.runtime.participant
    context = SagaContext.start("gift")

    async def stray() -> None: ...

    step = StepContext(
        transaction=None,  # type: ignore[arg-type]
        saga=context,
        event_id=context.saga_id,
        event_type="desk.held",
    )
    step.run.undo_functions = participant.undo_functions
    with pytest.raises(HandlerError, match=r"step.undo\(stray\): register it first"):
        step.undo(stray)
    with pytest.raises(HandlerError, match="its arguments must be JSON"):
        step.undo(participant.undo_functions["refund"], charge_id=object())
    with pytest.raises(HandlerError, match="at most 4096 bytes"):
        step.add_data(blob="x" * 5000)
