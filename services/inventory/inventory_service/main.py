"""Composition root: ``faststream run inventory_service.main:app``."""

from __future__ import annotations

from sagakit import SagaService, build_service

from .handlers import create_participant
from .settings import InventorySettings


def create_service(settings: InventorySettings | None = None) -> SagaService:
    """Build the inventory service from ``settings`` (default: the environment)."""
    settings = settings or InventorySettings()
    return build_service(create_participant(settings), settings)


service = create_service()
app = service.app
