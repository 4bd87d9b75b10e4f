"""Payment's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import uuid

from order_contracts import (
    ORDER_SAGA,
    InventoryReserved,
    PaymentProcessed,
    PaymentRefunded,
)
from sagakit import BusinessFailure, Participant, Prepared, StepContext, utc_now
from sqlalchemy import bindparam, insert, update

from . import domain
from .settings import PaymentSettings
from .tables import Base, Payment, Refund

# Built once, compiled when the store starts, run with values (StepContext.execute).
_payments = Base.metadata.tables[Payment.__tablename__]
_refunds = Base.metadata.tables[Refund.__tablename__]
_CHARGE = Prepared(insert(_payments))
_REFUND = Prepared(insert(_refunds))
_MARK_REFUNDED = Prepared(
    update(_payments)
    .where(_payments.c.saga_id == bindparam("w_saga_id"))
    .values(status=bindparam("status"), refunded_at=bindparam("refunded_at"))
)


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
            raise BusinessFailure(refusal.reason, detail=refusal.detail)
        payment_id = str(uuid.uuid4())
        await step.execute(
            _CHARGE,
            {
                "saga_id": str(step.saga_id),
                "payment_id": payment_id,
                "order_id": order.order_id,
                "amount": amount,
                "currency": order.currency,
                "status": domain.CAPTURED,
                "created_at": utc_now(),
            },
        )
        return PaymentProcessed(
            order=order, payment_id=payment_id, amount=amount, currency=order.currency
        )

    @payment.on_compensation("charge_payment")
    async def refund_payment(charged: PaymentProcessed, step: StepContext) -> PaymentRefunded:
        # sagakit runs this once, and only for a charge this step made: ``charged`` is
        # what charge_payment returned.
        now = utc_now()
        await step.execute(
            _REFUND,
            {
                "refund_id": str(uuid.uuid4()),
                "payment_id": charged.payment_id,
                "amount": charged.amount,
                "created_at": now,
            },
        )
        await step.execute(
            _MARK_REFUNDED,
            {"w_saga_id": str(step.saga_id), "status": domain.REFUNDED, "refunded_at": now},
        )
        return PaymentRefunded(
            order=charged.order, payment_id=charged.payment_id, amount=charged.amount
        )

    return payment
