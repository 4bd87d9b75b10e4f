"""Inventory settings: ``INVENTORY_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from sagakit import ParticipantSettings

DEFAULT_STOCK: dict[str, int] = {
    "SKU-APPLE": 1000,
    "SKU-PEAR": 1000,
    "SKU-PLUM": 1000,
    "SKU-RARE": 0,
}


class InventorySettings(ParticipantSettings, participant="inventory"):
    """``INVENTORY_STOCK`` (JSON, SKU → quantity) seeds SKUs the database does not know yet."""

    stock: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_STOCK))
