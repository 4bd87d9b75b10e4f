"""Notification's rules, free of I/O."""

from __future__ import annotations

from collections.abc import Iterable

CONFIRMATION = "confirmation"
CANCELLATION = "cancellation"

SENT = "sent"
UNDELIVERABLE = "undeliverable"

CONTACT_UNREACHABLE = "contact_unreachable"


def email_domain(email: str) -> str:
    """The domain of an address, lower-case, without a trailing root dot."""
    return email.rpartition("@")[2].lower().rstrip(".")


def is_reachable(email: str, unreachable_domains: Iterable[str]) -> bool:
    """False when the address's domain is, or lies under, one of ``unreachable_domains``.

    Suffixes match whole labels: ``.invalid`` covers ``mailhost.invalid`` and ``invalid``,
    ``example.com`` covers ``mx.example.com`` but not ``badexample.com``.
    """
    domain = email_domain(email)
    for suffix in unreachable_domains:
        parent = suffix.lower().strip(".")
        if parent and (domain == parent or domain.endswith(f".{parent}")):
            return False
    return True


def delivery_status(*, reachable: bool) -> str:
    """The status a notice is recorded with."""
    return SENT if reachable else UNDELIVERABLE
