"""Settings every participant shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _default_rabbitmq_url() -> str:
    return os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)


class ParticipantSettings(BaseSettings):
    """Runtime settings of one participant, read from the environment.

    A subclass sets ``service_name`` and ``env_prefix`` (e.g. ``INVENTORY_``); every field
    is then read from ``<PREFIX><FIELD>``. The broker URL falls back to ``RABBITMQ_URL``
    so that all local services can share one.
    """

    model_config = SettingsConfigDict(extra="ignore")

    service_name: ClassVar[str] = "participant"

    rabbitmq_url: str = Field(default_factory=_default_rabbitmq_url)
    database_url: str = ""
    prefetch: int = Field(default=32, ge=1)
    step_timeout_seconds: float = Field(default=10.0, gt=0)
    step_retry_budget: int = Field(default=4, ge=0)
    compensation_retry_budget: int = Field(default=8, ge=0)
    retry_base_delay_seconds: float = Field(default=0.2, gt=0)
    retry_max_delay_seconds: float = Field(default=10.0, gt=0)
    relay_interval_seconds: float = Field(default=0.5, gt=0)
    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    health_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _default_database(self) -> ParticipantSettings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///var/{self.service_name}.db"
        return self
