"""Money on the wire: a decimal string with two places, never a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema


def _parse_money(value: Any) -> Decimal:
    # A Decimal is accepted from Python code; on the wire only a string is.
    if not isinstance(value, str | Decimal):
        raise ValueError(
            f"money must be a decimal string such as '12.50', not {type(value).__name__}"
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError("money must be finite")
    if amount < 0:
        raise ValueError("money cannot be negative")
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError("money has at most two decimal places")
    return amount.quantize(Decimal("0.01"))


Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    PlainSerializer(lambda amount: f"{amount:.2f}", return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d+(\.\d{1,2})?$", "examples": ["12.50"]},
    ),
]
"""A non-negative amount with at most two decimal places, serialised as a string."""

CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
