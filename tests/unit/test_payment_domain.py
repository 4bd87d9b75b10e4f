"""Payment's pure rules: which charges go ahead and why the others are refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from payment_service.domain import CARD_DECLINED, LIMIT_EXCEEDED, Refusal, assess_charge

APPROVED = frozenset({"tok_visa", "tok_mastercard"})
LIMIT = Decimal("5000.00")


def assess(token: str, amount: str) -> Refusal | None:
    return assess_charge(
        token=token, amount=Decimal(amount), currency="EUR", approved_tokens=APPROVED, limit=LIMIT
    )


@pytest.mark.parametrize("token", sorted(APPROVED))
def test_an_approved_token_under_the_limit_is_charged(token: str) -> None:
    assert assess(token, "3.00") is None


def test_the_limit_itself_is_allowed() -> None:
    assert assess("tok_visa", "5000.00") is None


def test_one_cent_over_the_limit_is_refused() -> None:
    refusal = assess("tok_visa", "5000.01")

    assert refusal is not None
    assert refusal.reason == LIMIT_EXCEEDED
    assert refusal.detail == "order total 5000.01 EUR exceeds the limit of 5000.00"


@pytest.mark.parametrize("token", ["tok_declined", "tok_unknown", "", "TOK_VISA"])
def test_a_token_not_approved_is_declined_without_repeating_it(token: str) -> None:
    refusal = assess(token, "3.00")

    assert refusal is not None
    assert refusal.reason == CARD_DECLINED
    assert "tok" not in refusal.detail.lower()


def test_a_declined_card_is_reported_before_the_limit() -> None:
    refusal = assess("tok_declined", "9999.00")

    assert refusal is not None
    assert refusal.reason == CARD_DECLINED


@given(
    st.sampled_from(sorted(APPROVED)),
    st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False, allow_infinity=False),
)
def test_an_approved_token_is_refused_exactly_above_the_limit(token: str, amount: Decimal) -> None:
    refusal = assess_charge(
        token=token, amount=amount, currency="EUR", approved_tokens=APPROVED, limit=LIMIT
    )

    assert (refusal is not None) == (amount > LIMIT)
    if refusal is not None:
        assert refusal.reason == LIMIT_EXCEEDED
