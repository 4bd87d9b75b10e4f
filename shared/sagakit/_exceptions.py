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


class SpecError(SagaError):
    """The choreography spec, or a participant's registration against it, is inconsistent."""


class BrokerUnavailable(SagaError):
    """No RabbitMQ broker answered at the configured URL."""


class BrokerRefused(BrokerUnavailable):
    """A broker answered but refused the login: wrong user or password, or a virtual host
    that does not exist or the user may not use. The message names which, without password."""


class BrokerUrlError(SagaError, ValueError):
    """A broker URL (or list of them) that cannot be used; the message has no password."""


class DeadLetterError(SagaError):
    """A dead-letter command cannot do what was asked (unknown service or message)."""
