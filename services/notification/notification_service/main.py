"""Composition root: ``faststream run notification_service.main:app``."""

from __future__ import annotations

from sagakit import SagaService, build_service

from .handlers import create_participant
from .settings import NotificationSettings


def create_service(settings: NotificationSettings | None = None) -> SagaService:
    """Build the notification service from ``settings`` (default: the environment)."""
    settings = settings or NotificationSettings()
    return build_service(create_participant(settings), settings)


service = create_service()
app = service.app
