"""What every kind of handler does in its transaction: take the event into the inbox (a
duplicate is noticed here), then call the participant's handler within the step timeout."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sagakit._envelope import Envelope
from sagakit._exceptions import HandlerError, InvalidMessage
from sagakit.runtime._participant import StepContext, StepRun, Subscription, UndoFunction
from sagakit.runtime._step_results import Undo
from sagakit.store._recorder import Remembered, Transaction
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.runtime")


async def first_delivery(
    store: Store,
    transaction: Transaction,
    sub: Subscription,
    envelope: Envelope[Any],
    digest: str,
    *,
    step: str | None = None,
) -> Remembered:
    """Remember the event in the consumer's inbox and, the first time, claim ``step`` (in
    one statement where the store allows); ``first`` is False if it was handled before."""
    message_id = str(envelope.event_id)
    remembered = await store.remember(
        transaction,
        consumer=sub.queue,
        message_id=message_id,
        saga_id=envelope.context.saga_id,
        body_digest=digest,
        step=step,
    )
    if remembered.first:
        return remembered
    # Every copy sagakit sends of an event (a retry, a re-announcement, a replay) is
    # the same bytes: another body under a known id is another event, not a duplicate.
    recorded = remembered.digest
    if recorded is not None and recorded != digest:
        raise InvalidMessage(
            f"conflicting_duplicate: event {message_id} was handled before with another"
            " body; this one was not applied"
        )
    logger.info("duplicate delivery of %s ignored", envelope.event_id)
    return remembered


async def call_handler(
    sub: Subscription,
    envelope: Envelope[Any],
    transaction: Transaction,
    *,
    attempt: int,
    step_timeout: float,
    run: StepRun | None = None,
    payload: Any = None,
) -> Any:
    """Run the participant's handler for ``envelope`` in ``transaction``: on ``payload``
    (the event's own unless given), recording what it adds in ``run``."""
    context = StepContext(
        transaction=transaction,
        saga=envelope.context,
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        attempt=attempt,
        failure=envelope.context.last_failure(),
        run=run if run is not None else StepRun(),
    )
    # asyncio.timeout rather than wait_for, which runs every handler in a task of its own.
    async with asyncio.timeout(step_timeout):
        try:
            return await sub.handler(envelope.payload if payload is None else payload, context)
        except _PROGRAMMING_ERRORS as error:
            raise HandlerError(_summary(sub, error)) from error


# Raised by a handler's own code, these are bugs: retrying cannot fix them, and failing the
# step would cancel sagas for a fault of the service.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ValidationError)
_SAGAKIT = str(Path(__file__).resolve().parents[1])


def _summary(sub: Subscription, error: BaseException) -> str:
    """The error, and the last line of the service's own code (not sagakit's, not a
    library's) it went through."""
    own = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(_SAGAKIT) and "site-packages" not in frame.filename
    ]
    where = f" at {Path(own[-1].filename).name}:{own[-1].lineno}" if own else ""
    if isinstance(error, ValidationError):
        text = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]
        )
        text = f"ValidationError ({error.title}): {text}"
    else:
        text = f"{type(error).__name__}: {str(error)[:300]}"
    return f"{sub.kind.value} handler of {sub.name!r} raised {text}{where}"


async def run_undos(
    undos: list[Undo] | tuple[Undo, ...], functions: Mapping[str, UndoFunction]
) -> None:
    """Run ``undos``, the latest registered first."""
    for undo in reversed(undos):
        function = functions.get(undo.name)
        if function is None:
            raise HandlerError(
                f"the step registered the undo {undo.name!r}, which this participant no "
                f"longer has (registered: {', '.join(functions) or 'none'})"
            )
        await function(**undo.arguments)
