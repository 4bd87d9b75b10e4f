"""Shipping's pure rules: where it ships, and tracking numbers."""

from __future__ import annotations

import uuid

import pytest
from shipping_service.domain import TRACKING_PREFIX, is_served, tracking_number
from shipping_service.settings import DEFAULT_SERVED_COUNTRIES

SERVED = frozenset(DEFAULT_SERVED_COUNTRIES)


def test_the_reference_countries() -> None:
    assert {"DE", "FR", "NL", "BE", "GB", "IE", "ES", "IT", "US", "CA"} == SERVED


@pytest.mark.parametrize("country", sorted(SERVED))
def test_a_served_country(country: str) -> None:
    assert is_served(country, SERVED)


@pytest.mark.parametrize("country", ["AQ", "JP", "AT", "XX"])
def test_a_country_not_served(country: str) -> None:
    assert not is_served(country, SERVED)


def test_the_country_code_is_matched_whatever_its_case() -> None:
    assert is_served("de", SERVED)


def test_nothing_is_served_from_an_empty_list() -> None:
    assert not is_served("DE", frozenset())


def test_a_tracking_number_is_derived_from_the_shipment() -> None:
    shipment_id = uuid.UUID("0123456789abcdef0123456789abcdef")

    assert tracking_number(shipment_id) == f"{TRACKING_PREFIX}0123456789ABCDEF"
    assert tracking_number(shipment_id) == tracking_number(shipment_id)


def test_different_shipments_get_different_tracking_numbers() -> None:
    numbers = {tracking_number(uuid.uuid4()) for _ in range(1000)}

    assert len(numbers) == 1000
    assert all(len(n) == len(TRACKING_PREFIX) + 16 and n.isupper() for n in numbers)
