"""A participant's local persistence: inbox, step log and outbox beside the service's own tables,
and their retention.

sagakit's records go through a recorder (one interface, literal SQL per driver: sqlite3,
asyncpg); a handler's own statements are ``Prepared`` Core statements, compiled for the driver
when the store starts.
"""

from sagakit._exceptions import StatementRefused
from sagakit.store._prepared import Prepared, Rows
from sagakit.store._recorder import OutboxRow, Recorder, Remembered, StepStatus, Transaction
from sagakit.store._retention import StoreSize, store_size
from sagakit.store._store import Store

__all__ = [
    "OutboxRow",
    "Prepared",
    "Recorder",
    "Remembered",
    "Rows",
    "StatementRefused",
    "StepStatus",
    "Store",
    "StoreSize",
    "Transaction",
    "store_size",
]
