"""Shipping settings: ``SHIPPING_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
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


class ShippingSettings(ParticipantSettings):
    """``SHIPPING_SERVED_COUNTRIES`` (JSON list of ISO 3166 alpha-2 codes) ships there only."""

    model_config = SettingsConfigDict(env_prefix="SHIPPING_", extra="ignore")
    service_name: ClassVar[str] = "shipping"

    served_countries: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVED_COUNTRIES))

    @field_validator("served_countries")
    @classmethod
    def _upper_case(cls, countries: list[str]) -> list[str]:
        # Orders carry upper-case codes; a hand-written "de" must still match.
        return [country.strip().upper() for country in countries]
