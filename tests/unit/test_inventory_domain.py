"""Inventory's pure rules: totals per SKU and shortages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from inventory_service.domain import Shortage, find_shortages, requested_quantities

skus = st.sampled_from(["SKU-APPLE", "SKU-PEAR", "SKU-PLUM", "SKU-RARE", "SKU-NEW"])


def test_quantities_of_one_sku_on_several_lines_add_up() -> None:
    lines = [("SKU-APPLE", 2), ("SKU-PEAR", 1), ("SKU-APPLE", 5)]

    assert requested_quantities(lines) == {"SKU-APPLE": 7, "SKU-PEAR": 1}


def test_no_lines_request_nothing() -> None:
    assert requested_quantities([]) == {}


def test_enough_stock_means_no_shortage() -> None:
    assert find_shortages({"SKU-APPLE": 10}, {"SKU-APPLE": 10, "SKU-PEAR": 0}) == []


def test_one_unit_too_many_is_a_shortage() -> None:
    assert find_shortages({"SKU-APPLE": 11}, {"SKU-APPLE": 10}) == [Shortage("SKU-APPLE", 11, 10)]


def test_an_unknown_sku_has_no_stock() -> None:
    assert find_shortages({"SKU-NEW": 1}, {}) == [Shortage("SKU-NEW", 1, 0)]


def test_shortages_are_listed_by_sku_and_only_the_short_ones() -> None:
    requested = {"SKU-PLUM": 3, "SKU-APPLE": 2, "SKU-RARE": 1}
    available = {"SKU-PLUM": 1, "SKU-APPLE": 5, "SKU-RARE": 0}

    assert find_shortages(requested, available) == [
        Shortage("SKU-PLUM", 3, 1),
        Shortage("SKU-RARE", 1, 0),
    ]


def test_a_shortage_explains_itself() -> None:
    assert str(Shortage("SKU-RARE", 2, 0)) == "SKU-RARE: 2 requested, 0 available"


@given(st.lists(st.tuples(skus, st.integers(min_value=1, max_value=100))))
def test_totals_keep_every_unit(lines: list[tuple[str, int]]) -> None:
    totals = requested_quantities(lines)

    assert sum(totals.values()) == sum(quantity for _, quantity in lines)
    assert set(totals) == {sku for sku, _ in lines}


@given(
    st.dictionaries(skus, st.integers(min_value=1, max_value=50)),
    st.dictionaries(skus, st.integers(min_value=0, max_value=50)),
)
def test_a_shortage_exactly_when_a_request_exceeds_stock(
    requested: dict[str, int], available: dict[str, int]
) -> None:
    short = {s.sku for s in find_shortages(requested, available)}

    assert short == {sku for sku, qty in requested.items() if qty > available.get(sku, 0)}
