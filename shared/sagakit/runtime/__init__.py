"""Running a participant: the participant API, the runtime that enforces the saga rules, retries,
parking, the breaker and the outbox relay.
"""

from sagakit._exceptions import StoreUnavailable
from sagakit.runtime._app import SagaService, build_service
from sagakit.runtime._breaker import CircuitBreaker, Dependency
from sagakit.runtime._faults import CrashPoint
from sagakit.runtime._participant import (
    HandlerKind,
    Participant,
    StepContext,
    StepRun,
    Subscription,
)
from sagakit.runtime._relay import OutboxRelay
from sagakit.runtime._settings import ParticipantSettings

__all__ = [
    "CircuitBreaker",
    "CrashPoint",
    "Dependency",
    "HandlerKind",
    "OutboxRelay",
    "Participant",
    "ParticipantSettings",
    "SagaService",
    "StepContext",
    "StepRun",
    "StoreUnavailable",
    "Subscription",
    "build_service",
]
