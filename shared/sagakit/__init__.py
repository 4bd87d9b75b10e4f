"""sagakit: choreography-based sagas on FastStream and RabbitMQ.

The top level holds what a participant's author needs: the participant API, the wire
contract (envelope, saga context), the spec a participant is declared against, and the
exceptions. Everything else is imported from its subpackage:

- ``sagakit.runtime``: running a participant (retries, parking, the breaker, the relay);
- ``sagakit.store``: the participant's local store (inbox, step log, outbox);
- ``sagakit.broker``: addresses, failover, topology names and headers;
- ``sagakit.spec``: the choreography spec, its checker, AsyncAPI documents;
- ``sagakit.client``: starting and watching sagas, the dead-letter tool;
- ``sagakit.tracker``: the saga tracker (a read model of every saga);
- ``sagakit.console``: the operations console in a browser, served by the tracker;
- ``sagakit.observability``: logs, traces, metrics, health;
- ``sagakit.testing``: harnesses, the process supervisor;
- ``sagakit.cli``: the ``saga`` console script.
"""

from sagakit._context import SagaContext, StepOutcome, StepRecord, current_saga, utc_now
from sagakit._envelope import Envelope, EventPayload, derived_event_id
from sagakit._exceptions import (
    BrokerRefused,
    BrokerUnavailable,
    BrokerUrlError,
    BusinessFailure,
    HandlerError,
    InvalidMessage,
    SagaError,
    SpecError,
    StepFailed,
    TransientError,
)
from sagakit._system_events import CancelledEvent, CompensatedEvent, FailureEvent
from sagakit.runtime import (
    Participant,
    ParticipantSettings,
    SagaService,
    StepContext,
    build_service,
)
from sagakit.spec import ReactionSpec, SagaSpec, StepSpec
from sagakit.store import Prepared

__all__ = [
    "BrokerRefused",
    "BrokerUnavailable",
    "BrokerUrlError",
    "BusinessFailure",
    "CancelledEvent",
    "CompensatedEvent",
    "Envelope",
    "EventPayload",
    "FailureEvent",
    "HandlerError",
    "InvalidMessage",
    "Participant",
    "ParticipantSettings",
    "Prepared",
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
    "TransientError",
    "build_service",
    "current_saga",
    "derived_event_id",
    "utc_now",
]
