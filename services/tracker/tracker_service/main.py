"""Composition root: ``faststream run tracker_service.main:app``."""

from __future__ import annotations

from order_contracts import ORDER_SAGA
from sagakit.tracker import TrackerService, build_tracker

from .settings import TrackerSettings


def create_service(settings: TrackerSettings | None = None) -> TrackerService:
    """Build the tracker of the order flow from ``settings`` (default: the environment)."""
    return build_tracker(ORDER_SAGA, settings or TrackerSettings())


service = create_service()
app = service.app
