"""Payment settings: ``PAYMENT_*`` environment variables."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from sagakit import ParticipantSettings

DEFAULT_APPROVED_TOKENS: tuple[str, ...] = ("tok_visa", "tok_mastercard")
DEFAULT_ORDER_LIMIT = Decimal("5000.00")


class PaymentSettings(ParticipantSettings, participant="payment"):
    """``PAYMENT_APPROVED_TOKENS`` (JSON list) and ``PAYMENT_ORDER_LIMIT`` (a decimal string).

    Any token not in the approved list is declined; an order whose total exceeds the limit
    is refused whatever its token.
    """

    approved_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_APPROVED_TOKENS))
    order_limit: Decimal = Field(default=DEFAULT_ORDER_LIMIT, ge=0)
