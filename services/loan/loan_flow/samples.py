"""Loan applications for tests and demos, one per outcome the default settings give."""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum

from .contracts import LoanRequested


class Case(StrEnum):
    """Which outcome the application is built for (with each service's default settings)."""

    DISBURSED = "disbursed"
    OVER_LIMIT = "over_limit"  # vetting refuses: the first step, with nothing to undo
    NO_FUNDS = "insufficient_funds"  # ledger refuses
    CURRENCY = "currency_not_supported"  # documents refuses: the loan is unbooked
    HELD = "held_for_review"  # the bank holds the transfer: reversed, voided, unbooked


def sample_loan(case: Case = Case.DISBURSED) -> LoanRequested:
    """A fresh application (new ids) that ends as ``case`` says."""
    amount = {Case.OVER_LIMIT: "300000.00", Case.NO_FUNDS: "150000.00"}.get(case, "1200.00")
    return LoanRequested(
        application_id=str(uuid.uuid4()),
        applicant_id="applicant-1",
        amount=Decimal(amount),
        currency="CHF" if case is Case.CURRENCY else "EUR",
        iban="XX00BANK0000000001" if case is Case.HELD else "DE89370400440532013000",
    )
