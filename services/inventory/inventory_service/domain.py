"""Inventory's rules, free of I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ACTIVE = "active"
RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Shortage:
    """A SKU with less stock than an order asks for."""

    sku: str
    requested: int
    available: int

    def __str__(self) -> str:
        return f"{self.sku}: {self.requested} requested, {self.available} available"


def requested_quantities(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Total quantity per SKU (an order may name a SKU on several lines)."""
    totals: dict[str, int] = {}
    for sku, quantity in lines:
        totals[sku] = totals.get(sku, 0) + quantity
    return totals


def find_shortages(requested: Mapping[str, int], available: Mapping[str, int]) -> list[Shortage]:
    """Every SKU whose request exceeds its stock; an unknown SKU has stock 0."""
    return [
        Shortage(sku, quantity, available.get(sku, 0))
        for sku, quantity in sorted(requested.items())
        if quantity > available.get(sku, 0)
    ]
