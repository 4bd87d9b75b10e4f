"""Composition root: ``faststream run inventory_service.main:create_app --factory``.

Nothing is built or read from the environment when this module is imported: the factory
reads the settings when FastStream calls it.
"""

from __future__ import annotations

from faststream import FastStream
from sagakit import SagaService, build_service

from .handlers import create_participant
from .settings import InventorySettings


def create_service(settings: InventorySettings | None = None) -> SagaService:
    """Build the inventory service from ``settings`` (default: the environment)."""
    settings = settings or InventorySettings()
    return build_service(create_participant(settings), settings)


def create_app() -> FastStream:
    """The inventory service's FastStream app, its settings read from the environment now."""
    return create_service().app
