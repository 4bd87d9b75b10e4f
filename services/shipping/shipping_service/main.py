"""Composition root: ``faststream run shipping_service.main:app``."""

from __future__ import annotations

from sagakit import SagaService, build_service

from .handlers import create_participant
from .settings import ShippingSettings


def create_service(settings: ShippingSettings | None = None) -> SagaService:
    """Build the shipping service from ``settings`` (default: the environment)."""
    settings = settings or ShippingSettings()
    return build_service(create_participant(settings), settings)


service = create_service()
app = service.app
