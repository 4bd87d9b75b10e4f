"""The function FastStream calls for each delivery of one subscription.

Its parameter's annotation is the subscription's ``Envelope[Model]``: FastStream validates
the body against it and documents it in AsyncAPI. This module does not postpone the
evaluation of annotations (no ``from __future__ import annotations``), so the annotation is
the model itself, evaluated when the function is defined, not a name to resolve later.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from sagakit._context import current_scope
from sagakit._envelope import Envelope, EventPayload
from sagakit.runtime._dispatcher import Dispatcher
from sagakit.runtime._participant import Subscription


def consumer(
    dispatcher: Dispatcher, sub: Subscription, model: type[EventPayload]
) -> Callable[[Envelope[Any]], Awaitable[None]]:
    """The handler of ``sub``'s deliveries: ``model``'s envelopes, to ``dispatcher``."""

    async def consume(envelope: Envelope[model]) -> None:  # type: ignore[valid-type]
        scope = current_scope()
        assert scope is not None, "SagaMiddleware enters the delivery's scope"
        await dispatcher.handle(sub, envelope, scope)

    # Named after the subscription: FastStream names the AsyncAPI operation after it.
    consume.__name__ = consume.__qualname__ = f"{sub.kind.value}_{sub.name}_on_{sub.event_type}"
    return consume
