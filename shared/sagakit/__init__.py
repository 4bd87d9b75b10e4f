"""sagakit: choreography-based sagas on FastStream and RabbitMQ."""

from ._app import SagaService, build_service
from ._client import EventNotRouted, EventWatch, SagaClient, WatchTimeout
from ._context import SagaContext, StepOutcome, StepRecord, current_saga, saga_scope, utc_now
from ._envelope import Envelope, EventPayload, derived_event_id
from ._errors import (
    BrokerUnavailable,
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
from ._store import StepStatus, Store

__all__ = [
    "BrokerUnavailable",
    "Envelope",
    "EventNotRouted",
    "EventPayload",
    "EventWatch",
    "HandlerKind",
    "InvalidMessage",
    "Participant",
    "ParticipantSettings",
    "QueueProbe",
    "ReactionSpec",
    "SagaClient",
    "SagaContext",
    "SagaError",
    "SagaService",
    "SagaSpec",
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
    "Store",
    "Subscription",
    "TransientError",
    "WatchTimeout",
    "build_service",
    "consumed_queues",
    "current_saga",
    "derived_event_id",
    "saga_scope",
    "utc_now",
]
