"""Money on the wire: a decimal string with two places, never a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer


def _parse_money(value: Any) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError("money must be a decimal string such as '12.50', not a float")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError("money must be finite")
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError("money has at most two decimal places")
    return amount.quantize(Decimal("0.01"))


Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    PlainSerializer(lambda amount: f"{amount:.2f}", return_type=str),
    Field(ge=0, json_schema_extra={"type": "string", "pattern": r"^\d+(\.\d{1,2})?$"}),
]
"""A non-negative amount with at most two decimal places, serialised as a string."""

CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
