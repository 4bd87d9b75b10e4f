"""The exception hierarchy: one base, one subclass per kind of thing that went wrong."""

from __future__ import annotations


class SagaError(Exception):
    """Base of every error sagakit raises or expects handlers to raise."""


class StepFailed(SagaError):
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


class BrokerUnavailable(SagaError):
    """No RabbitMQ broker answered at the configured URL."""


class BrokerUrlError(SagaError, ValueError):
    """A broker URL (or list of them) that cannot be used; the message has no password."""


class DeadLetterError(SagaError):
    """A dead-letter command cannot do what was asked (unknown service or message)."""
