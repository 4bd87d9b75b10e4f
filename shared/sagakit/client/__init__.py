"""Talking to a flow from outside: starting and watching sagas, and the dead-letter tool."""

from sagakit._exceptions import (
    DeadLetterError,
    EventNotRouted,
    ReplayFailed,
    UnknownMessages,
    UnknownService,
    WatchTimeout,
)
from sagakit.client._client import EventWatch, SagaClient, connect
from sagakit.client._dead_letters import DeadLetters, Death, ParkedMessage, Selection

__all__ = [
    "DeadLetterError",
    "DeadLetters",
    "Death",
    "EventNotRouted",
    "EventWatch",
    "ParkedMessage",
    "ReplayFailed",
    "SagaClient",
    "Selection",
    "UnknownMessages",
    "UnknownService",
    "WatchTimeout",
    "connect",
]
