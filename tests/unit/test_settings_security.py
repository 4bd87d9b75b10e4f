"""No service uses the broker's guest account outside local development, and credentials
can come from files.

"Local development" is ``SAGAKIT_ENV`` unset or ``development`` (``<PREFIX>ENVIRONMENT``
overrides it per service). Anything else (the Docker image sets ``production``) refuses a
broker URL that logs in as ``guest``, or with no user name or no password, which AMQP
clients turn into ``guest``.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from pydantic import ValidationError
from sagakit import ParticipantSettings
from sagakit.runtime._settings import SHARED_BROKER_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
# The order system's services: one participant each, a `<name>_service` package with a
# composition root. services/loan (the second reference flow, run by its tests) is not deployed.
SERVICES = sorted(p.parent.parent.name for p in (ROOT / "services").glob("*/*_service/main.py"))
OWN_URL = "amqp://{user}:n0t-guest@broker.internal:5672/"


def _settings_class(service: str) -> type[ParticipantSettings]:
    module = importlib.import_module(f"{service}_service.settings")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ParticipantSettings)
        and value is not ParticipantSettings
    ]
    assert len(found) == 1, f"{service}_service.settings: one ParticipantSettings subclass"
    return found[0]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no broker, database or environment setting of any service."""
    prefixes = tuple(f"{s.upper()}_" for s in SERVICES)
    for key in list(os.environ):
        if key.startswith(prefixes) or key in {"SAGAKIT_ENV", *SHARED_BROKER_VARIABLES}:
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture(params=SERVICES)
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _settings(service: str) -> Any:
    return _settings_class(service)()


# -- the guest account ---------------------------------------------------------------


def test_every_service_settings_class_shares_the_guard(service: str) -> None:
    assert issubclass(_settings_class(service), ParticipantSettings)


def test_local_development_may_use_the_guest_default(service: str, env: pytest.MonkeyPatch) -> None:
    settings = _settings(service)
    assert settings.environment == "development"
    assert urlsplit(settings.rabbitmq_url).username == "guest"


@pytest.mark.parametrize(
    "url",
    [
        None,  # the default
        "amqp://guest:guest@127.0.0.1:5672/",
        "amqps://guest:other-password@broker.internal:5671/orders",
        "amqp://broker.internal/",  # no credentials: the client logs in as guest
        "amqp://inventory@broker.internal/",  # no password: the client sends guest
        "amqp://gu%65st:x@broker.internal/",  # guest, percent-encoded
    ],
)
def test_outside_local_development_guest_is_refused(
    service: str, env: pytest.MonkeyPatch, url: str | None
) -> None:
    env.setenv("SAGAKIT_ENV", "production")
    if url is not None:
        env.setenv(f"{service.upper()}_RABBITMQ_URL", url)
    with pytest.raises(ValidationError, match="only local development may do"):
        _settings(service)


def test_the_shared_broker_url_is_guarded_too(service: str, env: pytest.MonkeyPatch) -> None:
    env.setenv("SAGAKIT_ENV", "staging")
    env.setenv("RABBITMQ_URL", "amqp://guest:guest@broker.internal/")
    with pytest.raises(ValidationError, match="guest"):
        _settings(service)


def test_a_per_service_environment_turns_the_guard_on(
    service: str, env: pytest.MonkeyPatch
) -> None:
    env.setenv(f"{service.upper()}_ENVIRONMENT", "Production")
    with pytest.raises(ValidationError, match="guest"):
        _settings(service)


def test_a_service_with_its_own_user_starts_in_production(
    service: str, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SAGAKIT_ENV", "production")
    env.setenv(f"{service.upper()}_RABBITMQ_URL", OWN_URL.format(user=service))
    settings = _settings(service)
    assert settings.environment == "production"
    assert urlsplit(settings.rabbitmq_url).username == service


def test_a_client_certificate_is_an_identity_of_its_own(env: pytest.MonkeyPatch) -> None:
    env.setenv("SAGAKIT_ENV", "production")
    url = "amqps://broker.internal/?auth=EXTERNAL&cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem"
    env.setenv("INVENTORY_RABBITMQ_URL", url)
    assert _settings("inventory").rabbitmq_url == url
    env.setenv("INVENTORY_RABBITMQ_URL", url.replace("amqps", "amqp"))
    with pytest.raises(ValidationError, match="guest"):
        _settings("inventory")


def test_the_refusal_does_not_print_the_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("SAGAKIT_ENV", "production")
    env.setenv("INVENTORY_RABBITMQ_URL", "amqp://guest:s3cret-Pa55@broker.internal/")
    with pytest.raises(ValidationError) as refused:
        _settings("inventory")
    assert "s3cret-Pa55" not in str(refused.value)


# -- credentials from files ----------------------------------------------------------


def test_the_broker_url_can_come_from_a_file(
    service: str, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "rabbitmq_url"
    secret.write_text(OWN_URL.format(user=service) + "\n")
    env.setenv("SAGAKIT_ENV", "production")
    env.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1/")  # the service's file wins
    env.setenv(f"{service.upper()}_RABBITMQ_URL_FILE", str(secret))
    assert _settings(service).rabbitmq_url == OWN_URL.format(user=service)


def test_the_shared_broker_url_file_is_the_fallback(
    service: str, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "rabbitmq_url"
    secret.write_text("  amqp://shared:pw@broker.internal/  \n")
    env.setenv("RABBITMQ_URL_FILE", str(secret))
    assert _settings(service).rabbitmq_url == "amqp://shared:pw@broker.internal/"


def test_the_database_url_can_come_from_a_file(
    service: str, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"postgresql+asyncpg://{service}:pw@db.internal:5432/{service}"
    secret = tmp_path / "database_url"
    secret.write_text(url + "\n")
    env.setenv(f"{service.upper()}_DATABASE_URL_FILE", str(secret))
    assert _settings(service).database_url == url


@pytest.mark.parametrize("variable", ["RABBITMQ_URL", "DATABASE_URL"])
def test_a_value_and_its_file_together_are_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("sqlite+aiosqlite:///x.db")
    env.setenv(f"PAYMENT_{variable}", "sqlite+aiosqlite:///y.db")
    env.setenv(f"PAYMENT_{variable}_FILE", str(secret))
    with pytest.raises(ValidationError, match=f"PAYMENT_{variable} or PAYMENT_{variable}_FILE"):
        _settings("payment")


def test_the_shared_url_and_its_file_together_are_refused(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("amqp://a:b@c/")
    env.setenv("RABBITMQ_URL", "amqp://a:b@c/")
    env.setenv("RABBITMQ_URL_FILE", str(secret))
    with pytest.raises(ValidationError, match="not both"):
        _settings("shipping")


@pytest.mark.parametrize("contents", [None, "", " \n"])
def test_a_missing_or_empty_secret_file_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, contents: str | None
) -> None:
    secret = tmp_path / "secret"
    if contents is not None:
        secret.write_text(contents)
    env.setenv("NOTIFICATION_RABBITMQ_URL_FILE", str(secret))
    with pytest.raises(ValidationError, match="NOTIFICATION_RABBITMQ_URL_FILE"):
        _settings("notification")


# -- the deployment files ------------------------------------------------------------


def test_compose_never_uses_the_guest_account() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "guest" not in text.lower()
    compose = yaml.safe_load(text)
    urls = [
        re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
        for service in compose["services"].values()
        for value in (service.get("environment") or {}).values()
        if "amqp" in str(value)
    ]
    assert len(urls) >= len(SERVICES)
    for url in urls:
        parts = urlsplit(url)
        assert unquote(parts.username or "") not in {"", "guest"}, url
        assert parts.password, url
    for service in SERVICES:
        assert compose["services"][service]["environment"]["SAGAKIT_ENV"] == "production"


def test_the_broker_definitions_have_no_guest_account() -> None:
    definitions = (ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text()
    assert '"guest"' not in definitions


def test_the_image_runs_in_production_mode() -> None:
    assert re.search(r"^\s*SAGAKIT_ENV=production\b", (ROOT / "Dockerfile").read_text(), re.M)
