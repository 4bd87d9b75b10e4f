"""Talking to a flow from outside: starting and watching sagas, and the dead-letter tool."""

from sagakit.client._client import EventNotRouted, EventWatch, SagaClient, WatchTimeout, connect
from sagakit.client._dead_letters import (
    DeadLetters,
    Death,
    ParkedMessage,
    ReplayFailed,
    Selection,
    UnknownMessages,
    UnknownService,
)

__all__ = [
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
