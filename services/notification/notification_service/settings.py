"""Notification settings: ``NOTIFICATION_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from sagakit import ParticipantSettings

DEFAULT_UNREACHABLE_DOMAINS: tuple[str, ...] = (".invalid",)


class NotificationSettings(ParticipantSettings, participant="notification"):
    """``NOTIFICATION_UNREACHABLE_DOMAINS`` (JSON list of domain suffixes) cannot be reached.

    A contact whose email domain ends with one of the suffixes (or is the suffix's own
    domain, e.g. ``invalid`` for ``.invalid``) gets no confirmation, and the order fails.
    """

    unreachable_domains: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNREACHABLE_DOMAINS)
    )
