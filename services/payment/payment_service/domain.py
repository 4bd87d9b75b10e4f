"""Payment's rules, free of I/O."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

CAPTURED = "captured"
REFUNDED = "refunded"

CARD_DECLINED = "card_declined"
LIMIT_EXCEEDED = "limit_exceeded"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a charge is refused: a reason code and an explanation free of personal data."""

    reason: str
    detail: str


def assess_charge(
    *,
    token: str,
    amount: Decimal,
    currency: str,
    approved_tokens: Collection[str],
    limit: Decimal,
) -> Refusal | None:
    """None when the charge may go ahead, else why not.

    A token that is not approved is declined, whatever the amount; an approved token is
    refused when the order's total exceeds the per-order limit.
    """
    if token not in approved_tokens:
        # The token itself is personal data: the detail does not repeat it.
        return Refusal(CARD_DECLINED, "the payment method was declined")
    if amount > limit:
        return Refusal(
            LIMIT_EXCEEDED, f"order total {amount:.2f} {currency} exceeds the limit of {limit:.2f}"
        )
    return None
