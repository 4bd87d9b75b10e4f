"""What handling one delivery came to: an outcome, and the outbox rows to publish."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sagakit.store._recorder import OutboxRow


class Outcome(StrEnum):
    """How a delivery was handled; the value is the ``outcome`` label of the metrics and the
    ``saga.outcome`` attribute of the step's span."""

    COMPLETED = "completed"  # the step ran and its success event is in the outbox
    FAILED = "failed"  # the step failed: its failure event is in the outbox
    COMPENSATED = "compensated"  # the step was undone: its compensated event is in the outbox
    ANNOUNCED_AGAIN = "announce_again"  # undone before: the compensated event again
    NOTHING_TO_UNDO = "nothing_to_undo"  # never finished: the compensated event, nothing undone
    HANDLED = "handled"  # a reaction ran
    DUPLICATE = "duplicate"  # handled before: nothing done (the saga's unsent events go out)
    IGNORED = "ignored"  # the step's record says no: nothing done
    RETRY = "retry"  # a transient failure: a copy waits in the delay queue
    PARKED = "parked"  # a copy is in the dead-letter queue

    @property
    def acks(self) -> bool:
        """The delivery is acked once its events are published; a retried or parked one
        was acked when its copy was confirmed."""
        return self not in _ACKED_BY_ITS_COPY


_ACKED_BY_ITS_COPY = frozenset({Outcome.RETRY, Outcome.PARKED})


@dataclass(frozen=True, slots=True)
class Handled:
    """A delivery handled: its outcome and the outbox rows its transaction committed."""

    outcome: Outcome
    rows: Sequence[OutboxRow] = ()
