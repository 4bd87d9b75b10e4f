"""sagakit: choreography-based sagas on FastStream and RabbitMQ."""

from ._app import SagaService, build_service
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
from ._settings import ParticipantSettings
from ._spec import ReactionSpec, SagaSpec, StepSpec
from ._store import StepStatus, Store

__all__ = [
    "BrokerUnavailable",
    "Envelope",
    "EventPayload",
    "HandlerKind",
    "InvalidMessage",
    "Participant",
    "ParticipantSettings",
    "ReactionSpec",
    "SagaContext",
    "SagaError",
    "SagaService",
    "SagaSpec",
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
    "build_service",
    "current_saga",
    "derived_event_id",
    "saga_scope",
    "utc_now",
]
