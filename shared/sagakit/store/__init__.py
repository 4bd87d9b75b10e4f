"""A participant's local persistence: inbox, step log and outbox beside the service's own tables,
and their retention.
"""

from sagakit.store._retention import StoreSize, store_size
from sagakit.store._sql import Rows, Transaction
from sagakit.store._store import OutboxRow, StepStatus, Store

__all__ = [
    "OutboxRow",
    "Rows",
    "StepStatus",
    "Store",
    "StoreSize",
    "Transaction",
    "store_size",
]
