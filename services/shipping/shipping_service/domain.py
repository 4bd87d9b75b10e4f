"""Shipping's rules, free of I/O."""

from __future__ import annotations

import uuid
from collections.abc import Collection

BOOKED = "booked"
CANCELLED = "cancelled"

DESTINATION_NOT_SERVED = "destination_not_served"

TRACKING_PREFIX = "SK"


def is_served(country: str, served_countries: Collection[str]) -> bool:
    """True when shipments go to ``country`` (ISO 3166 alpha-2, any case)."""
    return country.upper() in served_countries


def tracking_number(shipment_id: uuid.UUID) -> str:
    """The carrier's tracking number of a shipment: short, upper-case, unique per shipment."""
    return f"{TRACKING_PREFIX}{shipment_id.hex[:16].upper()}"
