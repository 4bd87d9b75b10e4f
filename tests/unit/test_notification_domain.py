"""Notification's pure rules: which contacts can be reached, and a notice's status."""

from __future__ import annotations

import pytest
from notification_service.domain import (
    SENT,
    UNDELIVERABLE,
    delivery_status,
    email_domain,
    is_reachable,
)
from notification_service.settings import DEFAULT_UNREACHABLE_DOMAINS

DEFAULT = DEFAULT_UNREACHABLE_DOMAINS


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("ada@example.com", "example.com"),
        ("Ada@Example.COM", "example.com"),
        ("ada@example.com.", "example.com"),
        ("odd@name@host.org", "host.org"),
    ],
)
def test_the_domain_of_an_address(email: str, domain: str) -> None:
    assert email_domain(email) == domain


@pytest.mark.parametrize(
    "email", ["ada@mailhost.invalid", "ada@a.b.INVALID", "ada@invalid", "ada@host.invalid."]
)
def test_a_domain_under_invalid_cannot_be_reached(email: str) -> None:
    assert not is_reachable(email, DEFAULT)


@pytest.mark.parametrize(
    "email", ["ada@example.com", "ada@invalid.example.com", "ada@notinvalid", "ada@x.invalidx"]
)
def test_other_domains_can_be_reached(email: str) -> None:
    assert is_reachable(email, DEFAULT)


def test_a_configured_domain_covers_its_subdomains_only_at_a_label_boundary() -> None:
    blocked = ["example.com"]

    assert not is_reachable("ada@example.com", blocked)
    assert not is_reachable("ada@mx.example.com", blocked)
    assert is_reachable("ada@badexample.com", blocked)


def test_a_suffix_is_matched_whatever_its_case_or_dots() -> None:
    assert not is_reachable("ada@host.test", [".TEST."])


def test_an_empty_suffix_blocks_nothing() -> None:
    assert is_reachable("ada@example.com", ["", "."])


def test_no_configured_domain_reaches_everyone() -> None:
    assert is_reachable("ada@mailhost.invalid", [])


def test_a_notice_is_sent_or_undeliverable() -> None:
    assert delivery_status(reachable=True) == SENT
    assert delivery_status(reachable=False) == UNDELIVERABLE
