"""The saga tracker: a read model of every saga, built from the events alone."""

from sagakit.tracker._app import (
    TRACKER_QUEUE,
    TrackerService,
    TrackerSettings,
    build_tracker,
    tracker_queue,
)
from sagakit.tracker._model import (
    SagaState,
    SagaView,
    StepView,
    TrackedEvent,
    decode_event,
    summarize,
)
from sagakit.tracker._store import TrackerStore, tracker_store

__all__ = [
    "SagaState",
    "SagaView",
    "StepView",
    "TRACKER_QUEUE",
    "TrackedEvent",
    "TrackerService",
    "TrackerSettings",
    "TrackerStore",
    "build_tracker",
    "decode_event",
    "summarize",
    "tracker_queue",
    "tracker_store",
]
