"""sagakit: choreography-based sagas on FastStream and RabbitMQ."""

from ._app import SagaService, build_service
from ._checker import Gap, GapKind, check_choreography
from ._client import EventNotRouted, EventWatch, SagaClient, WatchTimeout
from ._context import SagaContext, StepOutcome, StepRecord, current_saga, saga_scope, utc_now
from ._envelope import Envelope, EventPayload, derived_event_id
from ._errors import (
    BrokerUnavailable,
    BrokerUrlError,
    InvalidMessage,
    SagaError,
    SpecError,
    StepFailed,
    TransientError,
)
from ._participant import HandlerKind, Participant, StepContext, Subscription
from ._processes import (
    QueueProbe,
    ServiceApp,
    ServiceProcesses,
    ServiceStartError,
    consumed_queues,
)
from ._settings import ParticipantSettings
from ._spec import ReactionSpec, SagaSpec, StepSpec
from ._sql import Rows, Transaction
from ._store import StepStatus, Store
from ._tracker import SagaState, SagaView, StepView, TrackedEvent
from ._tracker_app import TrackerService, TrackerSettings, build_tracker
from ._tracker_store import TrackerStore

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
