"""sagakit: choreography-based sagas on FastStream and RabbitMQ."""

from sagakit._context import SagaContext, StepOutcome, StepRecord, current_saga, saga_scope, utc_now
from sagakit._envelope import Envelope, EventPayload, derived_event_id
from sagakit._exceptions import (
    BrokerUnavailable,
    BrokerUrlError,
    InvalidMessage,
    SagaError,
    SpecError,
    StepFailed,
    TransientError,
)
from sagakit.client._client import EventNotRouted, EventWatch, SagaClient, WatchTimeout
from sagakit.runtime._app import SagaService, build_service
from sagakit.runtime._participant import HandlerKind, Participant, StepContext, Subscription
from sagakit.runtime._settings import ParticipantSettings
from sagakit.spec._checker import Gap, GapKind, check_choreography
from sagakit.spec._spec import ReactionSpec, SagaSpec, StepSpec
from sagakit.store._prepared import Prepared, Rows
from sagakit.store._recorder import StepStatus, Transaction
from sagakit.store._store import Store
from sagakit.testing._processes import (
    QueueProbe,
    ServiceApp,
    ServiceProcesses,
    ServiceStartError,
    consumed_queues,
)
from sagakit.tracker._app import TrackerService, TrackerSettings, build_tracker
from sagakit.tracker._model import SagaState, SagaView, StepView, TrackedEvent
from sagakit.tracker._store import TrackerStore

__all__ = [
    "BrokerUnavailable",
    "BrokerUrlError",
    "Envelope",
    "EventNotRouted",
    "EventPayload",
    "EventWatch",
    "Gap",
    "GapKind",
    "HandlerKind",
    "InvalidMessage",
    "Participant",
    "ParticipantSettings",
    "Prepared",
    "QueueProbe",
    "ReactionSpec",
    "Rows",
    "SagaClient",
    "SagaContext",
    "SagaError",
    "SagaService",
    "SagaSpec",
    "SagaState",
    "SagaView",
    "ServiceApp",
    "ServiceProcesses",
    "ServiceStartError",
    "SpecError",
    "StepContext",
    "StepFailed",
    "StepOutcome",
    "StepRecord",
    "StepSpec",
    "StepStatus",
    "StepView",
    "Store",
    "Subscription",
    "TrackedEvent",
    "TrackerService",
    "TrackerSettings",
    "TrackerStore",
    "Transaction",
    "TransientError",
    "WatchTimeout",
    "build_service",
    "build_tracker",
    "check_choreography",
    "consumed_queues",
    "current_saga",
    "derived_event_id",
    "saga_scope",
    "utc_now",
]
