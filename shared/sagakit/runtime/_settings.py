"""Settings every participant shares; each service subclasses with its own env prefix."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ModelWrapValidatorHandler, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sagakit._exceptions import BrokerUrlError
from sagakit.broker._topology import DELIVERY_LIMIT
from sagakit.broker._urls import broker_urls
from sagakit.observability._startup import watch_startup

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"

SHARED_BROKER_VARIABLES = ("RABBITMQ_URL", "RABBITMQ_URL_FILE", "RABBITMQ_URLS")
"""Where every service looks for the broker when its own variables name none."""

ENVIRONMENT_VARIABLE = "SAGAKIT_ENV"
LOCAL_DEVELOPMENT = "development"
"""The one environment where the broker's ``guest`` account is accepted."""

DEFAULT_RETENTION_DAYS = 7.0
MIN_SAFE_RETENTION_DAYS = 1.0
"""Below this, an inbox record may be gone before a message it guards comes back (a replay
from the dead-letter queue, a producer's restart after an outage): refused outside local
development, a warning in it."""


DATA_DIR_ENV = "SAGAKIT_DATA_DIR"
"""Where services keep their SQLite stores when no database URL is given: ``./var`` under
the directory a service (or a ``saga`` command) runs in, unless this variable names one."""


def data_dir() -> Path:
    """The data directory, absolute: ``$SAGAKIT_DATA_DIR``, else ``var`` in the current one."""
    return Path(os.environ.get(DATA_DIR_ENV) or "var").expanduser().resolve()


def default_database_url(service: str) -> str:
    """The SQLite store of ``service`` in the data directory, as an absolute URL.

    ``sqlite+aiosqlite:///var/x.db`` (three slashes) is a path relative to the current
    directory, which reads like ``/var``; the URL returned here has four (an absolute path).
    """
    return f"sqlite+aiosqlite:///{data_dir() / f'{service}.db'}"


def _default_rabbitmq_url() -> str:
    return os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)


def shared_broker_url() -> str:
    """The broker every service falls back on: ``RABBITMQ_URL``, ``RABBITMQ_URL_FILE`` or
    ``RABBITMQ_URLS``, else the local default (for command-line tools)."""
    return _shared_rabbitmq_url(_default_rabbitmq_url())


def _shared_rabbitmq_url(default: str) -> str:
    """The broker from the shared variables: RABBITMQ_URL, RABBITMQ_URL_FILE or RABBITMQ_URLS."""
    given = [name for name in SHARED_BROKER_VARIABLES if os.environ.get(name)]
    if len(given) == 2:
        raise ValueError(f"set {given[0]} or {given[1]}, not both")
    if len(given) > 2:
        raise ValueError(f"set only one of {', '.join(given)}")
    if given == ["RABBITMQ_URL_FILE"]:
        return _read_secret(Path(os.environ["RABBITMQ_URL_FILE"]), variable="RABBITMQ_URL_FILE")
    if given == ["RABBITMQ_URLS"]:
        return os.environ["RABBITMQ_URLS"]
    return default


def _default_environment() -> str:
    return os.environ.get(ENVIRONMENT_VARIABLE, LOCAL_DEVELOPMENT)


def _read_secret(path: Path, *, variable: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{variable}: {path} is empty")
    return value


class ParticipantSettings(BaseSettings):
    """Runtime settings of one participant, read from the environment.

    A service's settings name its participant once, and the rest follows from the name:
    ``class PayoutSettings(ParticipantSettings, participant="payout")`` reads every field
    from ``PAYOUT_<FIELD>`` and names the service ``payout``; a participant with no settings
    of its own uses ``ParticipantSettings.named("payout")``, which ``build_service`` picks
    when given none. The broker URL falls back to ``RABBITMQ_URL`` so that all local
    services can share one.

    A broker of several nodes (a cluster) is named in the comma form of the URL
    (``amqp://user:pass@host1:5672,host2:5672/vhost``) or as a list,
    ``<PREFIX>RABBITMQ_URLS`` (shared fallback ``RABBITMQ_URLS``): URLs separated by commas,
    or a JSON list. The nodes must differ only in host and port; the service connects to
    the first that answers and, when its connection is lost, goes on to the next.

    Credentials may come from files instead (Docker or Kubernetes secrets):
    ``<PREFIX>RABBITMQ_URL_FILE`` and ``<PREFIX>DATABASE_URL_FILE`` name a file whose
    stripped contents are the URL (any of the forms above); ``RABBITMQ_URL_FILE`` is the
    shared fallback. Setting a variable and its ``_FILE`` twin together is an error, and so
    is setting two of ``RABBITMQ_URL``, ``RABBITMQ_URL_FILE`` and ``RABBITMQ_URLS``.

    Outside local development (``SAGAKIT_ENV``, or ``<PREFIX>ENVIRONMENT``, set to anything
    but ``development``), a broker URL that logs in as ``guest``, or without a user name and
    password (which AMQP clients turn into ``guest``), is refused.

    Retention: inbox records and sent outbox rows older than ``<PREFIX>RETENTION_DAYS``
    (7) are deleted by a background task every ``<PREFIX>PRUNE_INTERVAL_SECONDS`` (3600);
    the step log only once ``<PREFIX>STEP_LOG_RETENTION_DAYS`` is set (at least as long).
    Outside local development a retention below one day is refused.
    """

    # Inputs stay out of validation errors: they would print broker and database passwords.
    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)

    service_name: ClassVar[str] = "participant"

    def __init_subclass__(cls, participant: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if participant is not None:
            cls.service_name = participant
            # The subclass's own copy of the config: the base keeps no prefix.
            cls.model_config["env_prefix"] = f"{participant.upper()}_"

    @classmethod
    def named(cls, participant: str) -> type[ParticipantSettings]:
        """The settings class of a participant with no settings of its own: every field
        read from ``<PARTICIPANT>_<FIELD>``."""
        name = "".join(part.title() for part in participant.split("_")) + "Settings"
        return type(name, (cls,), {"__module__": __name__}, participant=participant)

    rabbitmq_url: str = Field(default_factory=_default_rabbitmq_url)
    rabbitmq_url_file: Path | None = None
    rabbitmq_urls: str = ""
    database_url: str = ""
    database_url_file: Path | None = None
    environment: str = Field(default_factory=_default_environment)
    prefetch: int = Field(default=32, ge=1)
    step_timeout_seconds: float = Field(default=10.0, gt=0)
    step_retry_budget: int = Field(default=4, ge=0)
    compensation_retry_budget: int = Field(default=8, ge=0)
    retry_base_delay_seconds: float = Field(default=0.2, gt=0)
    retry_max_delay_seconds: float = Field(default=10.0, gt=0)
    relay_interval_seconds: float = Field(default=0.5, gt=0)
    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    # Deliveries of one message before the broker dead-letters it (a message that keeps
    # killing its consumer). Fixed at queue declaration: changing it for existing queues
    # needs them deleted and declared again (or a broker policy).
    delivery_limit: int = Field(default=DELIVERY_LIMIT, ge=1)
    # While the store (or the broker) is away, deliveries wait unacknowledged; one held
    # longer than this goes back to its queue (within RabbitMQ's consumer timeout, 30 min).
    outage_hold_seconds: float = Field(default=300.0, gt=0)
    outage_probe_max_delay_seconds: float = Field(default=5.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # FastStream's "Received"/"Processed" line per message: about 4% of a service's CPU
    # at full load (bench/README.md), so below INFO unless asked for.
    message_log_level: Literal["DEBUG", "INFO"] = "DEBUG"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # FastStream's Prometheus middleware (faststream_* series per queue) on /metrics.
    broker_metrics: bool = False
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # Bounded stores (_retention.py): inbox records and sent outbox rows older than this are
    # deleted; the step log only when its own retention is set (it is what makes a late
    # compensation right, and the participant cannot tell when a saga has ended).
    retention_days: float = Field(default=DEFAULT_RETENTION_DAYS, gt=0)
    step_log_retention_days: float | None = Field(default=None, gt=0)
    prune_interval_seconds: float = Field(default=3600.0, gt=0)

    @model_validator(mode="wrap")
    @classmethod
    def _short_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # Reading a service's settings means a service is starting: from here on, a bad
        # setting, a refusing broker or a port in use prints a line or two, not a traceback.
        prefix = str(cls.model_config.get("env_prefix", ""))
        watch_startup(name=cls.service_name, prefix=prefix, broker_url="", ports={})
        return handler(data)

    @model_validator(mode="after")
    def _resolve(self) -> ParticipantSettings:
        # One validator, so that the order is explicit: files, defaults, then the guard.
        self._read_credential_files()
        # Parsed now, so that a bad address stops the service before it starts.
        try:
            broker_urls(self.rabbitmq_url)
        except BrokerUrlError as exc:
            raise ValueError(
                f"{self._prefix}RABBITMQ_URL (or RABBITMQ_URL, …_FILE, …_URLS): {exc}"
            ) from None
        if not self.database_url:
            self.database_url = default_database_url(self.service_name)
        self.environment = self.environment.strip().lower()
        if self.environment != LOCAL_DEVELOPMENT:
            self._refuse_guest()
        self._check_retention()
        ports = {
            port: name
            for port, name in (
                (self.health_port, "HEALTH_PORT"),
                (self.metrics_port, "METRICS_PORT"),
            )
            if port is not None
        }
        watch_startup(
            name=self.service_name,
            prefix=self._prefix,
            broker_url=self.broker_urls[0],
            ports=ports,
            database_url=self.database_url,
        )
        return self

    @property
    def retention(self) -> timedelta:
        """``retention_days`` as a timedelta: how long inbox and sent outbox rows are kept."""
        return timedelta(days=self.retention_days)

    @property
    def step_log_retention(self) -> timedelta | None:
        """``step_log_retention_days`` as a timedelta, or None: the step log is kept."""
        days = self.step_log_retention_days
        return timedelta(days=days) if days is not None else None

    @property
    def _prefix(self) -> str:
        return str(self.model_config.get("env_prefix", ""))

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """One URL per broker node, in the order they are tried."""
        return broker_urls(self.rabbitmq_url)

    def _read_credential_files(self) -> None:
        prefix = self._prefix
        if self.rabbitmq_urls and "rabbitmq_url" in self.model_fields_set:
            raise ValueError(f"set {prefix}RABBITMQ_URL or {prefix}RABBITMQ_URLS, not both")
        if self.rabbitmq_url_file is not None:
            self._refuse_both("rabbitmq_url")
            if self.rabbitmq_urls:
                raise ValueError(
                    f"set {prefix}RABBITMQ_URL_FILE or {prefix}RABBITMQ_URLS, not both"
                )
            self.rabbitmq_url = _read_secret(
                self.rabbitmq_url_file, variable=f"{prefix}RABBITMQ_URL_FILE"
            )
        elif self.rabbitmq_urls:
            self.rabbitmq_url = self.rabbitmq_urls
        elif "rabbitmq_url" not in self.model_fields_set:
            self.rabbitmq_url = _shared_rabbitmq_url(self.rabbitmq_url)
        if self.database_url_file is not None:
            self._refuse_both("database_url")
            self.database_url = _read_secret(
                self.database_url_file, variable=f"{prefix}DATABASE_URL_FILE"
            )

    def _refuse_both(self, field: str) -> None:
        if field in self.model_fields_set:
            variable = f"{self._prefix}{field.upper()}"
            raise ValueError(f"set {variable} or {variable}_FILE, not both")

    def _check_retention(self) -> None:
        prefix = self._prefix
        step_log = self.step_log_retention_days
        if step_log is not None and step_log < self.retention_days:
            # The step log is the backstop behind the inbox: a message that comes back after
            # its inbox record is gone still finds its saga's step done.
            raise ValueError(
                f"{prefix}STEP_LOG_RETENTION_DAYS ({step_log:g}) is shorter than "
                f"{prefix}RETENTION_DAYS ({self.retention_days:g}): keep the step log at "
                "least as long as the inbox"
            )
        if self.retention_days < MIN_SAFE_RETENTION_DAYS and self.environment != LOCAL_DEVELOPMENT:
            raise ValueError(
                f"{prefix}RETENTION_DAYS={self.retention_days:g} is below "
                f"{MIN_SAFE_RETENTION_DAYS:g} day: the inbox must outlast any redelivery or "
                "replay window (a message replayed from the dead-letter queue after its inbox "
                "record is gone runs its step again); only local development may go lower "
                f"({ENVIRONMENT_VARIABLE}={self.environment})"
            )

    def _refuse_guest(self) -> None:
        for node in self.broker_urls:
            url = urlsplit(node)
            if url.scheme == "amqps" and "auth=external" in url.query.lower():
                continue  # the client certificate names the user
            user = unquote(url.username or "")
            if user in {"", "guest"} or not url.password:
                raise ValueError(
                    f"{self._prefix}RABBITMQ_URL logs in as "
                    f"{user or 'guest (no credentials)'!r}, which only local development may "
                    f"do ({ENVIRONMENT_VARIABLE}={self.environment}): give the service its own "
                    f"broker user, by {self._prefix}RABBITMQ_URL or "
                    f"{self._prefix}RABBITMQ_URL_FILE"
                )
