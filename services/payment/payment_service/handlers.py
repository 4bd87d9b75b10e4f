"""Payment's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import uuid

from order_contracts import (
    ORDER_SAGA,
    InventoryReserved,
    OrderEvent,
    PaymentProcessed,
    PaymentRefunded,
)
from sagakit import Participant, StepContext, StepFailed, utc_now
from sqlalchemy import select

from . import domain
from .settings import PaymentSettings
from .tables import Base, Payment, Refund


def create_participant(settings: PaymentSettings) -> Participant:
    """The payment participant: charges the order, refunds it on the backward path."""
    payment = Participant("payment", spec=ORDER_SAGA, tables=Base.metadata)
    approved_tokens = frozenset(settings.approved_tokens)

    @payment.on_step("charge_payment")
    async def charge_payment(event: InventoryReserved, step: StepContext) -> PaymentProcessed:
        order = event.order
        amount = order.total()
        refusal = domain.assess_charge(
            token=order.payment_method,
            amount=amount,
            currency=order.currency,
            approved_tokens=approved_tokens,
            limit=settings.order_limit,
        )
        if refusal is not None:
            raise StepFailed(refusal.reason, detail=refusal.detail)
        payment_id = str(uuid.uuid4())
        step.session.add(
            Payment(
                saga_id=str(step.saga_id),
                payment_id=payment_id,
                order_id=order.order_id,
                amount=amount,
                currency=order.currency,
                status=domain.CAPTURED,
                created_at=utc_now(),
            )
        )
        return PaymentProcessed(
            order=order, payment_id=payment_id, amount=amount, currency=order.currency
        )

    @payment.on_compensation("charge_payment")
    async def refund_payment(event: OrderEvent, step: StepContext) -> PaymentRefunded:
        charge = (
            await step.session.execute(select(Payment).where(Payment.saga_id == str(step.saga_id)))
        ).scalar_one_or_none()
        if charge is None or charge.status == domain.REFUNDED:
            return PaymentRefunded(order=event.order)
        now = utc_now()
        step.session.add(
            Refund(
                refund_id=str(uuid.uuid4()),
                payment_id=charge.payment_id,
                amount=charge.amount,
                created_at=now,
            )
        )
        charge.status = domain.REFUNDED
        charge.refunded_at = now
        return PaymentRefunded(
            order=event.order, payment_id=charge.payment_id, amount=charge.amount
        )

    return payment
