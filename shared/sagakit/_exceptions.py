"""Every exception sagakit raises, and the two a handler raises to tell sagakit what happened.

The tree:

* SagaError
  + BusinessFailure - a handler's signal: a business failure, the saga is undone
  + TransientError - a handler's signal: a failure that may pass, the message is retried
  + InvalidMessage - a message that can never be processed: parked with its reason
    + HandlerError - a bug in a handler: parked as ``handler_error`` with its summary
  + SpecError - the spec, or a participant's registration against it, is inconsistent
  + BrokerUrlError (also a ValueError) - a broker URL that cannot be used
  + BrokerUnavailable - no broker answered
    + BrokerRefused - a broker answered but refused the user, password or virtual host
  + StoreUnavailable - the participant's store cannot be used now
  + StatementRefused - a handler's statement the store's driver cannot run (at start-up)
  + EventNotRouted - an event no queue would receive (``SagaClient.publish``)
  + WatchTimeout (also a TimeoutError) - sagas did not end in time (``EventWatch``)
  + ServiceStartError - a service process did not start consuming (``ServiceProcesses``)
  + DeadLetterError - a dead-letter command cannot do what was asked
    + UnknownService
    + UnknownMessages
    + ReplayFailed
  + SteeringRefused - an operator's cancel or re-drive does not apply to the saga

``BusinessFailure`` and ``TransientError`` are signals rather than errors: a handler raises them
and the runtime answers (a failure event and compensation; a retry through a delay queue),
so they never reach the handler's caller. They are ``SagaError``s all the same, so that one
``except SagaError`` around code that calls handlers directly (a test, a script) sees them.

Not in the tree, on purpose: the runtime's internal control flow (``Outage``,
``RetryableError``, ``EventTooLarge`` in ``sagakit.runtime``), which never leaves the
runtime, and ``ConnectionRenewed``, which must stay the AMQP client's own connection error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagakit._envelope import Envelope
    from sagakit.client._dead_letters import ParkedMessage


class SagaError(Exception):
    """Base of every error sagakit raises or expects handlers to raise."""


class BusinessFailure(SagaError):
    """A business failure: the step cannot be done, and the saga must be undone.

    Raise it from a step handler. sagakit publishes the step's failure event with the
    reason, which starts compensation; nobody publishes failure events by hand.

    Args:
        reason: A short machine-readable code, e.g. ``insufficient_stock``.
        detail: A human-readable explanation. Keep personal data out of it.
    """

    def __init__(self, reason: str, *, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransientError(SagaError):
    """A failure that may go away on its own (a timeout, a dependency that is down).

    sagakit retries the message with exponential backoff through delay queues, within the
    step's retry budget; when the budget is spent the step fails like a business failure.
    """


class InvalidMessage(SagaError):
    """A message that can never be processed: undecodable, schema-invalid, unknown type.

    It is parked in the service's dead-letter queue with ``reason`` in its headers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandlerError(InvalidMessage):
    """A programming error: a handler returned the wrong type, raised ``TypeError``,
    ``AttributeError``, ``NameError`` or a ``ValidationError`` on its own code path, or an
    event sagakit has to build does not validate.

    Retrying cannot fix it and it is not the saga's fault: the message is parked with the
    reason ``handler_error`` and the error's summary (nothing committed, the saga neither
    retried nor cancelled); redrive it once the code is fixed. The test harnesses raise it
    at once.
    """

    def __init__(self, summary: str) -> None:
        super().__init__(f"handler_error: {summary}")
        self.summary = summary


class SpecError(SagaError):
    """The choreography spec, or a participant's registration against it, is inconsistent."""


class BrokerUrlError(SagaError, ValueError):
    """A broker URL (or list of them) that cannot be used; the message has no password."""


class BrokerUnavailable(SagaError):
    """No RabbitMQ broker answered at the configured URL."""


class BrokerRefused(BrokerUnavailable):
    """A broker answered but refused the login: wrong user or password, or a virtual host
    that does not exist or the user may not use. The message names which, without password."""


class StoreUnavailable(SagaError):
    """The participant's store cannot be used now (raised by the store itself)."""


class StatementRefused(SagaError):
    """A handler's ``Prepared`` statement the store's driver cannot run as compiled (raised
    when the store starts, with the reason)."""


class EventNotRouted(SagaError):
    """The broker had no queue bound for an event: nobody would ever receive it."""


class WatchTimeout(SagaError, TimeoutError):
    """Sagas did not end in time.

    Attributes:
        pending: The ids of the sagas that had not ended.
        seen: Every awaited saga's events so far, in arrival order.
    """

    def __init__(
        self, message: str, *, pending: Iterable[uuid.UUID], seen: Mapping[uuid.UUID, Any]
    ) -> None:
        super().__init__(message)
        self.pending = frozenset(pending)
        self.seen: dict[uuid.UUID, list[Envelope[Any]]] = dict(seen)


class ServiceStartError(SagaError):
    """A service exited, or did not start consuming, in time; the message ends with its log."""


class DeadLetterError(SagaError):
    """A dead-letter command cannot do what was asked (unknown service or message)."""


class UnknownService(DeadLetterError):
    """A service named on the command line has no dead-letter queue on this broker."""

    def __init__(self, services: Sequence[str]) -> None:
        super().__init__(f"no dead-letter queue for {', '.join(services)} on this broker")
        self.services = tuple(services)


class UnknownMessages(DeadLetterError):
    """Message ids that match no parked message (in the selected services and filters)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = tuple(sorted(ids))
        super().__init__(f"no parked message with id {', '.join(self.ids)}")


class ReplayFailed(DeadLetterError):
    """Some selected messages could not be sent back; they are still parked."""

    def __init__(
        self, *, replayed: Sequence[ParkedMessage], failed: Sequence[tuple[ParkedMessage, str]]
    ) -> None:
        self.replayed = list(replayed)
        self.failed = list(failed)
        why = "; ".join(f"{entry.service} {entry.id}: {problem}" for entry, problem in failed)
        super().__init__(f"{len(failed)} message(s) not replayed: {why}")


class SteeringRefused(SagaError):
    """An operator's action does not apply to the saga as it stands (ended, unknown, being
    undone already for a cancel); nothing was sent."""

    def __init__(self, saga_id: str, why: str) -> None:
        super().__init__(f"saga {saga_id}: {why}")
        self.saga_id = saga_id
        self.why = why


def __getattr__(name: str) -> Any:
    # ``StepFailed``, the old name of ``BusinessFailure`` (a step's failure *event* is
    # ``StepSpec.failure``): kept while code written against it lands; removed before the
    # first release.
    if name == "StepFailed":
        return BusinessFailure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
