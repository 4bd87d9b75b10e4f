"""SagaMiddleware: the one place a delivery's in-process state is made, entered and left.

As a Temporal interceptor moves a workflow's context in and out of headers, this middleware
wraps every delivery of sagakit's subscribers: it makes the delivery's ``DeliveryScope``
(the delivery, whether the handler began, then the saga, the log fields and the held outbox
rows), makes it current for everything below it (the dispatcher, log lines, the step's span,
the outbox), and leaves it when the delivery is done. It also decides what a failure means:
the message's fault (it is parked) or the service's (it is requeued after a pause).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from pydantic import ValidationError

from sagakit._context import DeliveryScope
from sagakit._exceptions import InvalidMessage

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo

    from sagakit.runtime._redelivery import Redelivery

logger = logging.getLogger("sagakit.runtime")

# An error that is neither the message's fault nor an outage (a bug) sends the message back
# after a pause; the quorum queue's delivery limit stops it from looping forever. Outages
# never take this path: the breaker holds their deliveries (_breaker.py).
REQUEUE_PAUSE_SECONDS = 1.0


class SagaMiddleware(BaseMiddleware):
    """Wraps each delivery of a participant's subscribers in its ``DeliveryScope``.

    FastStream makes one per delivery; ``SagaMiddleware.of(...)`` gives what a router's
    ``middlewares`` takes.
    """

    def __init__(
        self,
        msg: Any,
        /,
        *,
        context: ContextRepo,
        redelivery: Redelivery,
        max_message_bytes: int,
    ) -> None:
        super().__init__(msg, context=context)
        self.redelivery = redelivery
        self.max_message_bytes = max_message_bytes

    @classmethod
    def of(cls, redelivery: Redelivery, *, max_message_bytes: int) -> Callable[..., SagaMiddleware]:
        """The middleware of one participant: it parks through ``redelivery``."""
        return functools.partial(cls, redelivery=redelivery, max_message_bytes=max_message_bytes)

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        if len(msg.body) > self.max_message_bytes:
            await self._park(msg, f"too_large: {len(msg.body)} bytes")
            return None
        with DeliveryScope(message=msg) as scope:
            try:
                return await call_next(msg)
            except InvalidMessage as exc:
                await self._park(msg, exc.reason)
            except Exception as exc:
                if not scope.began:
                    # Before the handler began: the message could not be decoded or validated.
                    await self._park(msg, describe(exc))
                    return None
                logger.exception("handling failed for an infrastructure reason; requeueing")
                await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
                await msg.nack()  # RabbitMessage.nack requeues by default
        return None

    async def _park(self, msg: StreamMessage[Any], reason: str) -> None:
        queue = self.redelivery.origin_queue(msg)
        # The id as it came on the wire: FastStream makes one up for a message without any.
        message_id = getattr(msg.raw_message, "message_id", None)
        logger.warning("parking message %.80r from %s: %s", message_id, queue, reason)
        kind = "handler_error" if reason.startswith("handler_error:") else "bad_input"
        await self.redelivery.park(msg, queue=queue, reason=reason, kind=kind)


def describe(exc: BaseException) -> str:
    """The parking reason of a message that failed before its handler began."""
    if isinstance(exc, InvalidMessage):
        return exc.reason
    if isinstance(exc, ValidationError):
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        return f"schema_invalid: {errors}"
    if isinstance(exc, UnicodeDecodeError | ValueError):
        return f"undecodable: {type(exc).__name__}: {str(exc)[:200]}"
    return f"unprocessable: {type(exc).__name__}: {str(exc)[:200]}"
