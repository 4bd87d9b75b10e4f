"""Notification's handlers: thin glue between events, the domain rules and the tables."""

from __future__ import annotations

import logging
import uuid

from order_contracts import ORDER_SAGA, OrderCancelled, OrderFulfilled, ShipmentCreated
from sagakit import BusinessFailure, Participant, Prepared, StepContext, utc_now
from sqlalchemy import bindparam, insert, select

from . import domain
from .settings import NotificationSettings
from .tables import Base, Notice

# Built once, compiled when the store starts, run with values (StepContext.execute).
_notices = Base.metadata.tables[Notice.__tablename__]
_RECORD = Prepared(insert(_notices))
_NOTICE_OF_KIND = Prepared(
    select(_notices.c.notice_id).where(
        _notices.c.saga_id == bindparam("w_saga_id"), _notices.c.kind == bindparam("w_kind")
    )
)

logger = logging.getLogger(__name__)


def create_participant(settings: NotificationSettings) -> Participant:
    """The notification participant: confirms fulfilled orders, tells of cancelled ones."""
    notification = Participant("notification", spec=ORDER_SAGA, tables=Base.metadata)
    unreachable = tuple(settings.unreachable_domains)

    @notification.on_step("confirm_order")
    async def confirm_order(event: ShipmentCreated, step: StepContext) -> OrderFulfilled:
        order = event.order
        if not domain.is_reachable(order.customer.email, unreachable):
            # The address is personal data: the detail names the rule, not the contact.
            raise BusinessFailure(
                domain.CONTACT_UNREACHABLE, detail="the customer's email domain cannot be reached"
            )
        notice_id = str(uuid.uuid4())
        await step.execute(
            _RECORD,
            {
                "notice_id": notice_id,
                "saga_id": str(step.saga_id),
                "order_id": order.order_id,
                "kind": domain.CONFIRMATION,
                "recipient": order.customer.email,
                "status": domain.SENT,
                "created_at": utc_now(),
            },
        )
        return OrderFulfilled(order=order, notification_id=notice_id)

    @notification.on_reaction("send_cancellation_notice")
    async def send_cancellation_notice(event: OrderCancelled, step: StepContext) -> None:
        saga_id = str(step.saga_id)
        already = (
            await step.execute(
                _NOTICE_OF_KIND, {"w_saga_id": saga_id, "w_kind": domain.CANCELLATION}
            )
        ).first()
        if already is not None:
            logger.info("cancellation notice already recorded: nothing to do")
            return
        order = event.order
        status = domain.delivery_status(
            reachable=domain.is_reachable(order.customer.email, unreachable)
        )
        await step.execute(
            _RECORD,
            {
                "notice_id": str(uuid.uuid4()),
                "saga_id": saga_id,
                "order_id": order.order_id,
                "kind": domain.CANCELLATION,
                "recipient": order.customer.email,
                "status": status,
                "created_at": utc_now(),
            },
        )
        logger.info("cancellation notice recorded (%s)", status)

    return notification
