"""Shipping settings: ``SHIPPING_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from sagakit import ParticipantSettings

DEFAULT_SERVED_COUNTRIES: tuple[str, ...] = (
    "DE",
    "FR",
    "NL",
    "BE",
    "GB",
    "IE",
    "ES",
    "IT",
    "US",
    "CA",
)


class ShippingSettings(ParticipantSettings, participant="shipping"):
    """``SHIPPING_SERVED_COUNTRIES`` (JSON list of ISO 3166 alpha-2 codes) ships there only."""

    served_countries: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVED_COUNTRIES))

    @field_validator("served_countries")
    @classmethod
    def _upper_case(cls, countries: list[str]) -> list[str]:
        # Orders carry upper-case codes; a hand-written "de" must still match.
        return [country.strip().upper() for country in countries]
