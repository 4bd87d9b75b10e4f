"""Talking to a flow from outside: starting and watching sagas, the dead-letter tool, and
steering a stalled saga (cancel, re-drive)."""

from sagakit._exceptions import (
    DeadLetterError,
    EventNotRouted,
    ReplayFailed,
    SteeringRefused,
    UnknownMessages,
    UnknownService,
    WatchTimeout,
)
from sagakit.client._client import EventWatch, SagaClient, connect
from sagakit.client._dead_letters import DeadLetters, Death, ParkedMessage, Selection
from sagakit.client._steering import Action, SteeringPlan, plan_steering, steer

__all__ = [
    "Action",
    "DeadLetterError",
    "DeadLetters",
    "Death",
    "EventNotRouted",
    "EventWatch",
    "ParkedMessage",
    "ReplayFailed",
    "SagaClient",
    "Selection",
    "SteeringPlan",
    "SteeringRefused",
    "UnknownMessages",
    "UnknownService",
    "WatchTimeout",
    "connect",
    "plan_steering",
    "steer",
]
