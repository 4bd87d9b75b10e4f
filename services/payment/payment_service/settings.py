"""Payment settings: ``PAYMENT_*`` environment variables."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sagakit import ParticipantSettings

DEFAULT_APPROVED_TOKENS: tuple[str, ...] = ("tok_visa", "tok_mastercard")
DEFAULT_ORDER_LIMIT = Decimal("5000.00")


class PaymentSettings(ParticipantSettings):
    """``PAYMENT_APPROVED_TOKENS`` (JSON list) and ``PAYMENT_ORDER_LIMIT`` (a decimal string).

    Any token not in the approved list is declined; an order whose total exceeds the limit
    is refused whatever its token.
    """

    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore")
    service_name: ClassVar[str] = "payment"

    approved_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_APPROVED_TOKENS))
    order_limit: Decimal = Field(default=DEFAULT_ORDER_LIMIT, ge=0)
