"""Inventory settings: ``INVENTORY_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sagakit import ParticipantSettings

DEFAULT_STOCK: dict[str, int] = {
    "SKU-APPLE": 1000,
    "SKU-PEAR": 1000,
    "SKU-PLUM": 1000,
    "SKU-RARE": 0,
}


class InventorySettings(ParticipantSettings):
    """``INVENTORY_STOCK`` (JSON, SKU → quantity) seeds SKUs the database does not know yet."""

    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore")
    service_name: ClassVar[str] = "inventory"

    stock: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_STOCK))
