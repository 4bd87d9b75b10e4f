"""What every kind of handler does in its transaction: take the event into the inbox (a
duplicate is noticed here), then call the participant's handler within the step timeout."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sagakit._envelope import Envelope
from sagakit._exceptions import InvalidMessage
from sagakit.runtime._participant import StepContext, Subscription
from sagakit.store._sql import Transaction
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.runtime")


async def first_delivery(
    store: Store, transaction: Transaction, sub: Subscription, envelope: Envelope[Any], digest: str
) -> bool:
    """Remember the event in the consumer's inbox; False if it was handled before."""
    message_id = str(envelope.event_id)
    first = await store.remember_message(
        transaction,
        consumer=sub.queue,
        message_id=message_id,
        saga_id=envelope.context.saga_id,
        body_digest=digest,
    )
    if first:
        return True
    # Every copy sagakit sends of an event (a retry, a re-announcement, a replay) is
    # the same bytes: another body under a known id is another event, not a duplicate.
    recorded = await store.remembered_digest(transaction, consumer=sub.queue, message_id=message_id)
    if recorded is not None and recorded != digest:
        raise InvalidMessage(
            f"conflicting_duplicate: event {message_id} was handled before with another"
            " body; this one was not applied"
        )
    logger.info("duplicate delivery of %s ignored", envelope.event_id)
    return False


async def call_handler(
    sub: Subscription,
    envelope: Envelope[Any],
    transaction: Transaction,
    *,
    attempt: int,
    step_timeout: float,
) -> Any:
    """Run the participant's handler for ``envelope`` in ``transaction``."""
    context = StepContext(
        transaction=transaction,
        saga=envelope.context,
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        attempt=attempt,
        failure=envelope.context.last_failure(),
    )
    # asyncio.timeout rather than wait_for, which runs every handler in a task of its own.
    async with asyncio.timeout(step_timeout):
        return await sub.handler(envelope.payload, context)
