"""Composition root: ``faststream run tracker_service.main:create_app --factory``.

Nothing is built or read from the environment when this module is imported: the factory
reads the settings when FastStream calls it.
"""

from __future__ import annotations

from faststream import FastStream
from order_contracts import ORDER_SAGA
from sagakit.tracker import TrackerService, build_tracker

from .settings import TrackerSettings


def create_service(settings: TrackerSettings | None = None) -> TrackerService:
    """Build the tracker of the order flow from ``settings`` (default: the environment)."""
    return build_tracker(ORDER_SAGA, settings or TrackerSettings())


def create_app() -> FastStream:
    """The tracker's FastStream app, its settings read from the environment now."""
    return create_service().app
