"""A stand-in for the bank that payout pays loans out through: a system outside every
participant's database, which sagakit cannot roll back. Its ledger is a JSON-lines file.

It keeps the two promises a real payment API makes: a transfer is idempotent by the key its
caller gives (a retry does not pay twice), and so is a reversal.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Transfer:
    """One transfer: ``held`` when the bank keeps it for review after sending it."""

    transfer_id: str
    key: str
    iban: str
    amount: Decimal
    status: str
    reversed: bool = False


class Bank:
    """Transfers money to IBANs; holds those to ``held_countries`` for review."""

    def __init__(self, ledger: Path, *, held_countries: frozenset[str] = frozenset()) -> None:
        self.ledger = ledger
        self.held_countries = held_countries

    def transfers(self) -> list[Transfer]:
        """Every transfer, reversals applied."""
        found: dict[str, Transfer] = {}
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        for line in map(json.loads, lines):
            if line["op"] == "transfer":
                found[line["key"]] = Transfer(
                    line["transfer_id"],
                    line["key"],
                    line["iban"],
                    Decimal(line["amount"]),
                    line["status"],
                )
            elif line["key"] in found:
                old = found[line["key"]]
                found[line["key"]] = Transfer(
                    old.transfer_id, old.key, old.iban, old.amount, old.status, reversed=True
                )
        return list(found.values())

    def transfer(self, *, key: str, iban: str, amount: Decimal) -> Transfer:
        """Send ``amount`` to ``iban``, once per ``key``."""
        for done in self.transfers():
            if done.key == key:
                return done
        status = "held" if iban[:2] in self.held_countries else "sent"
        sent = Transfer(str(uuid.uuid4()), key, iban, amount, status)
        self._append(
            op="transfer",
            key=key,
            transfer_id=sent.transfer_id,
            iban=iban,
            amount=str(amount),
            status=status,
        )
        return sent

    def reverse(self, key: str) -> None:
        """Take back the transfer made under ``key``, if there is one not taken back yet."""
        if any(t.key == key and not t.reversed for t in self.transfers()):
            self._append(op="reverse", key=key)

    def _append(self, **line: str) -> None:
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        with self.ledger.open("a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(line) + "\n")
