"""The order saga's Temporal workflow: four activities, compensations appended as it goes.

As Temporal's saga samples write it: after each step that succeeded, the workflow appends
the activity that undoes it; when a step refuses the order (a non-retryable
``ApplicationError`` of type ``BusinessFailure``), it runs the compensations in reverse
order and ends. The activities are in ``peers.temporal_app``; this module holds only what
runs in the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from peers._saga import FULFILLED, STEPS, Order, cancelled

TASK_QUEUE = "order-sagas"
BUSINESS_FAILURE = "BusinessFailure"
ACTIVITY_TIMEOUT = timedelta(seconds=60)
# The compensation of each step that has one, by step.
UNDO_ACTIVITY = {
    "reserve_stock": "release_stock",
    "charge_payment": "refund_payment",
    "ship_order": "cancel_shipment",
}


@workflow.defn(name="OrderSaga")
class OrderSaga:
    """Reserve, charge, ship, confirm; on a refusal, undo what was done, newest first."""

    @workflow.run
    async def run(self, order: Order) -> str:
        compensations: list[str] = []
        for step in STEPS:
            try:
                await workflow.execute_activity(
                    step.name, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
            except ActivityError as error:
                cause = error.cause
                if not (isinstance(cause, ApplicationError) and cause.type == BUSINESS_FAILURE):
                    raise
                for compensation in reversed(compensations):
                    await workflow.execute_activity(
                        compensation, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                    )
                return cancelled(step.name)
            if step.name in UNDO_ACTIVITY:
                compensations.append(UNDO_ACTIVITY[step.name])
        return FULFILLED
