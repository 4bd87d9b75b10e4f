"""The chaos run of the order flow, and the pieces the fault matrix (tests/faults) reuses.

``python -m sagakit_chaos --sagas 1000 --seed 42`` starts a RabbitMQ node of its own and the
four participants, runs sagas under a seeded plan of faults (kills, crash points, broker
restarts, cut and slow connections, duplicates, garbage, hostile input, stores taken away),
then audits every store, the dead-letter queues and a ledger of the exchange against each
other. The parts:

- the plan: ``plan_order`` (the order mix), ``FaultKind`` and the hostile messages;
- the witnesses: ``Ledger`` (every event on the exchange), ``read_stores`` (each service's
  own tables), ``wait_for_end`` and ``quiesce``;
- the verdict: ``audit``, one ``Audit`` of named checks.
"""

from ._audit import Audit, audit
from ._faults import FaultKind, Malformed
from ._hostile import (
    MAX_MESSAGE_BYTES,
    Hostile,
    amplified_start,
    backward_events,
    conflicting_copy,
    crowded_headers,
    largest_order,
    poison_start,
    stranger_backward,
)
from ._ledger import Ledger, Seen
from ._orders import ANY_STEP, INITIAL_STOCK, SKUS, PlannedOrder, plan_order
from ._run import ChaosOptions, main, run_chaos
from ._settle import consumers, quiesce, wait_for_end
from ._store_faults import Placement, StoreFault, StoreFaults
from ._stores import StoreState, read_stores

__all__ = [
    "ANY_STEP",
    "Audit",
    "ChaosOptions",
    "FaultKind",
    "Hostile",
    "INITIAL_STOCK",
    "Ledger",
    "MAX_MESSAGE_BYTES",
    "Malformed",
    "Placement",
    "PlannedOrder",
    "SKUS",
    "Seen",
    "StoreFault",
    "StoreFaults",
    "StoreState",
    "amplified_start",
    "audit",
    "backward_events",
    "conflicting_copy",
    "consumers",
    "crowded_headers",
    "largest_order",
    "main",
    "plan_order",
    "poison_start",
    "quiesce",
    "read_stores",
    "run_chaos",
    "stranger_backward",
    "wait_for_end",
]
