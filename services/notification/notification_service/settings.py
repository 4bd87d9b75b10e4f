"""Notification settings: ``NOTIFICATION_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sagakit import ParticipantSettings

DEFAULT_UNREACHABLE_DOMAINS: tuple[str, ...] = (".invalid",)


class NotificationSettings(ParticipantSettings):
    """``NOTIFICATION_UNREACHABLE_DOMAINS`` (JSON list of domain suffixes) cannot be reached.

    A contact whose email domain ends with one of the suffixes (or is the suffix's own
    domain, e.g. ``invalid`` for ``.invalid``) gets no confirmation, and the order fails.
    """

    model_config = SettingsConfigDict(env_prefix="NOTIFICATION_", extra="ignore")
    service_name: ClassVar[str] = "notification"

    unreachable_domains: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNREACHABLE_DOMAINS)
    )
