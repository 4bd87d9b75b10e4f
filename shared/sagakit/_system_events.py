"""The events sagakit builds on its own, as base models a flow extends.

sagakit announces a step's failure (from ``BusinessFailure``), a compensation that had nothing
to undo, and the saga's cancellation itself. It fills the fields these bases declare, and
the field the spec names in ``SagaSpec.start_field``; any other field of such an event must have a
default. ``SagaSpec`` checks this when it is built.
"""

from __future__ import annotations

from sagakit._envelope import EventPayload


class FailureEvent(EventPayload):
    """Base of a step's failure event: sagakit fills ``reason`` and ``detail``.

    Attributes:
        reason: The machine-readable code of ``BusinessFailure`` (or one of sagakit's own:
            ``retries_exhausted``, ``deadline_exceeded``, ``event_too_large``).
        detail: The human explanation, cut to 1000 characters.
    """

    # Unbounded in the schema (a consumer may read longer codes later); sagakit cuts what
    # it writes to 200 and 1000 characters.
    reason: str
    detail: str = ""


class CompensatedEvent(EventPayload):
    """Base of a step's compensated event.

    sagakit builds it itself when a compensation has nothing to undo (the step never
    finished, or was undone before) and when the compensation handler returns None: its
    other fields need defaults.
    """


class CancelledEvent(EventPayload):
    """Base of a flow's cancelled event: sagakit fills the step that failed and why.

    Attributes:
        failed_step: The name of the step whose failure started the backward path.
        reason: That failure's reason code.
    """

    failed_step: str
    reason: str


SYSTEM_FIELDS: dict[type[EventPayload], tuple[str, ...]] = {
    FailureEvent: ("reason", "detail"),
    CompensatedEvent: (),
    CancelledEvent: ("failed_step", "reason"),
}
"""The fields sagakit fills in each kind of event it builds."""
