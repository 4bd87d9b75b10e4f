"""Composition root: ``faststream run payment_service.main:app``."""

from __future__ import annotations

from sagakit import SagaService, build_service

from .handlers import create_participant
from .settings import PaymentSettings


def create_service(settings: PaymentSettings | None = None) -> SagaService:
    """Build the payment service from ``settings`` (default: the environment)."""
    settings = settings or PaymentSettings()
    return build_service(create_participant(settings), settings)


service = create_service()
app = service.app
