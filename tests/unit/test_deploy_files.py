"""The deployment files agree with the code: docker-compose.yml (valid for the Compose
Specification's JSON schema), the Prometheus configuration, the Dockerfile, the broker
definitions, the PostgreSQL init script and the hashed requirements files.

No Docker engine is needed: what compose and the image would run is read from the files and
checked against the settings classes, entry points and pins the services really have.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from faststream import FastStream
from jsonschema import Draft7Validator
from order_contracts import ORDER_SAGA
from pydantic_settings import BaseSettings
from sagakit.observability import otlp_protocol, tracing_enabled

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
POSTGRES_INIT = ROOT / "deploy" / "postgres" / "init-databases.sql"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
REQUIREMENTS = ROOT / "deploy" / "requirements"
# The Compose Specification's schema, vendored from the compose-spec project (see README).
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"

# The order system's services: one participant each, a `<name>_service` package with a
# composition root. services/loan (the second reference flow, run by its tests) is not deployed.
SERVICES = sorted(p.parent.parent.name for p in (ROOT / "services").glob("*/*_service/main.py"))
INFRASTRUCTURE = {"rabbitmq", "postgres", "jaeger", "prometheus"}
# Variables a service reads that carry no service prefix.
SHARED_VARIABLES = {
    "SAGAKIT_ENV",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
}
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--trusted-host")


def _generator() -> ModuleType:
    # A script, not a package: loaded by path, registered so that its dataclasses work.
    name = "sagakit_deploy_generate_definitions"
    if name not in sys.modules:
        path = ROOT / "deploy" / "rabbitmq" / "generate_definitions.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


generator = _generator()


def _interpolate(value: object) -> str:
    """Compose's ``${NAME:-default}`` with NAME unset: what a plain ``up`` uses."""
    text = str(value)
    if re.search(r"\$\{[A-Z0-9_]+\}", text):
        raise AssertionError(f"{text!r} needs a variable with no default")
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _environment(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    environment = compose["services"][service].get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, not a list"
    return {key: _interpolate(value) for key, value in environment.items()}


def _settings_class(service: str) -> type[BaseSettings]:
    module = importlib.import_module(f"{service}_service.settings")
    prefix = f"{service.upper()}_"
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseSettings)
        and value.model_config.get("env_prefix") == prefix
    ]
    assert len(found) == 1, f"{service}_service.settings: one settings class with {prefix}"
    return found[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    prefixes = tuple(f"{s.upper()}_" for s in SERVICES)
    for key in list(os.environ):
        if key.startswith(prefixes) or key in SHARED_VARIABLES or key.startswith("RABBITMQ_URL"):
            monkeypatch.delenv(key)
    return monkeypatch


def _hash_matches(password_hash: str, password: str) -> bool:
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


# -- docker-compose.yml ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _schema_errors(validator: Draft7Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_is_valid_for_the_compose_specification(
    compose: dict[str, Any], compose_schema: Draft7Validator
) -> None:
    assert _schema_errors(compose_schema, compose) == []
    # Compose v2 reads the file without a `version:`; v1 would need one.
    assert "version" not in compose
    assert compose["name"] == "sagakit"


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("a misspelt key", lambda c: c["services"]["rabbitmq"].update(prots=["5672:5672"])),
        ("ports as a mapping", lambda c: c["services"]["jaeger"].update(ports={"ui": 16686})),
        (
            "a dependency condition",
            lambda c: c["services"]["payment"]["depends_on"]["rabbitmq"].update(
                condition="service_ready"
            ),
        ),
        ("a volume of no kind", lambda c: c.update(volumes={"data": ["not", "a", "volume"]})),
    ],
)
def test_the_schema_check_catches_a_broken_compose_file(
    compose: dict[str, Any], compose_schema: Draft7Validator, where: str, change: Any
) -> None:
    broken = copy.deepcopy(compose)
    change(broken)
    assert _schema_errors(compose_schema, broken), where


def test_compose_parses_and_runs_every_service_beside_its_infrastructure(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == INFRASTRUCTURE | set(SERVICES)
    assert "tracker" in SERVICES or "tracker" not in compose["services"]
    rabbitmq = compose["services"]["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:3\.\d+-management", rabbitmq["image"])
    for name in INFRASTRUCTURE - {"jaeger"}:
        assert compose["services"][name]["healthcheck"]["test"], name


def _published(definition: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    ports = []
    for port in definition.get("ports", []):
        assert isinstance(port, str), f"{port!r}: the short form, with the host address"
        host_ip, _, rest = _interpolate(port).partition(":")
        host_port, _, container_port = rest.partition(":")
        ports.append((host_ip, host_port, container_port))
    return ports


def test_every_published_port_listens_on_the_loopback_address_only(
    compose: dict[str, Any],
) -> None:
    published = {name: _published(d) for name, d in compose["services"].items()}
    assert any(published.values())
    for name, ports in published.items():
        for host_ip, host_port, container_port in ports:
            assert host_ip == "127.0.0.1", f"{name}: {host_ip}:{host_port}:{container_port}"
            assert host_port.isdigit(), name
            assert container_port.isdigit(), name


def test_jaeger_is_the_v2_image_with_otlp_and_the_ui_published(compose: dict[str, Any]) -> None:
    jaeger = compose["services"]["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])
    # v1's all-in-one read COLLECTOR_*/SPAN_STORAGE_* variables; v2 reads a config file.
    assert not any(
        k.startswith(("COLLECTOR_", "SPAN_STORAGE")) for k in jaeger.get("environment", {})
    )
    assert {port for _, _, port in _published(jaeger)} == {"4317", "4318", "16686"}
    for service in SERVICES:
        depends = compose["services"][service]["depends_on"]
        assert depends["jaeger"]["condition"] == "service_started"


def _prometheus() -> dict[str, Any]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert isinstance(config, dict)
    return config


def test_prometheus_runs_in_compose_with_the_configuration_from_deploy(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prometheus["image"])
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    # The image's own command reads this path: no command to override.
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "command" not in prometheus
    assert {port for _, _, port in _published(prometheus)} == {"9090"}
    assert "9090/-/ready" in " ".join(prometheus["healthcheck"]["test"])


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    [discovery] = jobs["sagakit"]["dns_sd_configs"]
    # DNS finds every replica of a scaled service; each target keeps its service's name.
    assert discovery["type"] == "A"
    assert sorted(discovery["names"]) == SERVICES
    [relabel] = jobs["sagakit"]["relabel_configs"]
    assert relabel == {"source_labels": ["__meta_dns_name"], "target_label": "service"}
    for service in SERVICES:
        port = _environment(compose, service)[f"{service.upper()}_METRICS_PORT"]
        assert discovery["port"] == int(port), service
    for job, service, port in (
        ("rabbitmq", "rabbitmq", "15692"),
        ("rabbitmq-queues", "rabbitmq", "15692"),
        ("jaeger", "jaeger", "8888"),
    ):
        [static] = jobs[job]["static_configs"]
        assert static["targets"] == [f"{service}:{port}"]
        assert service in compose["services"]
    # Per-queue depths (the dead-letter queues' among them) from rabbitmq_prometheus.
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    assert jobs["rabbitmq-queues"]["params"] == {"family": ["queue_coarse_metrics"]}
    assert len(jobs) == len(_prometheus()["scrape_configs"]), "job names are unique"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_built_from_the_dockerfile_with_its_name(
    compose: dict[str, Any], service: str
) -> None:
    definition = compose["services"][service]
    assert definition["build"]["context"] == "."
    assert definition["build"]["dockerfile"] == "Dockerfile"
    assert definition["build"]["args"] == {"SERVICE": service}
    assert definition["restart"] in {"always", "unless-stopped", "on-failure"}
    # No container_name and no host port: `docker compose up --scale <service>=3` works.
    assert "container_name" not in definition
    assert "ports" not in definition
    # The image's command runs the service (test_the_image_entry_point_exists): no override.
    assert "command" not in definition
    assert "entrypoint" not in definition


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_waits_for_healthy_infrastructure_and_is_checked_on_readyz(
    compose: dict[str, Any], service: str
) -> None:
    definition = compose["services"][service]
    depends = definition["depends_on"]
    assert depends["rabbitmq"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    environment = _environment(compose, service)
    port = environment[f"{service.upper()}_HEALTH_PORT"]
    probe = " ".join(definition["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in probe


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_compose_sets_is_one_the_service_reads(
    compose: dict[str, Any], service: str
) -> None:
    prefix = f"{service.upper()}_"
    fields = set(_settings_class(service).model_fields)
    for key in _environment(compose, service):
        if key in SHARED_VARIABLES:
            continue
        assert key.startswith(prefix), f"{service}: {key} is read by nobody"
        assert key.removeprefix(prefix).lower() in fields, f"{service}: {key} is read by nobody"


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_starts_from_the_compose_environment_in_production_mode(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    environment = _environment(compose, service)
    for key, value in environment.items():
        clean_env.setenv(key, value)
    settings: Any = _settings_class(service)()
    prefix = service.upper()
    assert settings.environment == "production"
    assert settings.health_port == int(environment[f"{prefix}_HEALTH_PORT"])
    assert settings.metrics_port == int(environment[f"{prefix}_METRICS_PORT"])
    assert settings.rabbitmq_url == environment[f"{prefix}_RABBITMQ_URL"]
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert environment["OTEL_SERVICE_NAME"] == service
    endpoint = urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "jaeger"
    assert endpoint.port in {4317, 4318}
    assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == (
        "grpc" if endpoint.port == 4317 else "http/protobuf"
    )
    # What the service's tracing setup makes of that same environment.
    assert tracing_enabled(environment)
    assert otlp_protocol(environment) == environment["OTEL_EXPORTER_OTLP_PROTOCOL"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_logs_in_to_the_broker_as_its_own_user_from_the_definitions(
    compose: dict[str, Any], service: str
) -> None:
    url = urlsplit(_environment(compose, service)[f"{service.upper()}_RABBITMQ_URL"])
    assert url.scheme in {"amqp", "amqps"}
    assert url.hostname == "rabbitmq"
    assert unquote(url.username or "") == service
    users = {u["name"]: u for u in _definitions()["users"]}
    assert service in users
    assert url.password is not None
    assert _hash_matches(users[service]["password_hash"], unquote(url.password))


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_own_database_role_from_the_init_script(
    compose: dict[str, Any], service: str
) -> None:
    url = urlsplit(_environment(compose, service)[f"{service.upper()}_DATABASE_URL"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres"
    roles, databases = _postgres_init()
    assert roles[service] == unquote(url.password or "")
    assert url.username == service
    assert databases[url.path.lstrip("/")] == service


def test_no_two_services_share_credentials(compose: dict[str, Any]) -> None:
    for variable in ("RABBITMQ_URL", "DATABASE_URL"):
        urls = [_environment(compose, s)[f"{s.upper()}_{variable}"] for s in SERVICES]
        assert len(set(urls)) == len(urls), variable


def test_rabbitmq_loads_the_definitions_file_at_boot(compose: dict[str, Any]) -> None:
    mounts = dict(v.split(":")[:2] for v in compose["services"]["rabbitmq"]["volumes"])
    conf_target = mounts["./deploy/rabbitmq/rabbitmq.conf"]
    assert conf_target.startswith("/etc/rabbitmq/conf.d/")
    settings = dict(
        line.split("=", 1)
        for line in RABBITMQ_CONF.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert settings["load_definitions "].strip() == mounts["./deploy/rabbitmq/definitions.json"]


# -- broker definitions ----------------------------------------------------------------


def _definitions() -> dict[str, Any]:
    import json

    document = json.loads(DEFINITIONS.read_text())
    assert isinstance(document, dict)
    return document


def test_the_committed_definitions_are_the_generated_ones() -> None:
    expected = generator.render(
        generator.definitions(ORDER_SAGA, generator.broker_users(ORDER_SAGA))
    )
    assert DEFINITIONS.read_text() == expected, "run deploy/rabbitmq/generate_definitions.py"


def test_the_definitions_hold_exactly_the_services_the_client_and_the_operator() -> None:
    users = {u["name"] for u in _definitions()["users"]}
    assert users == set(SERVICES) | {"saga-client", "saga-admin"}
    for user in _definitions()["users"]:
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert _hash_matches(user["password_hash"], generator.local_dev_password(user["name"]))


def test_a_participant_may_publish_exactly_the_events_it_emits() -> None:
    topics = {t["user"]: t for t in _definitions()["topic_permissions"]}
    event_types = set(ORDER_SAGA.events)
    for participant in ORDER_SAGA.participants():
        write = re.compile(topics[participant]["write"])
        allowed = {e for e in event_types if write.fullmatch(e)}
        assert allowed == set(generator.emitted(ORDER_SAGA, participant)), participant
        read = re.compile(topics[participant]["read"])
        assert {e for e in event_types if read.fullmatch(e)} == set(
            generator.consumed(ORDER_SAGA, participant)
        )
        assert not read.fullmatch("#")
    assert {e for e in event_types if re.fullmatch(topics["saga-client"]["write"], e)} == {
        ORDER_SAGA.start_event
    }
    assert not any(re.fullmatch(topics["tracker"]["write"], e) for e in event_types)


def test_every_event_type_has_exactly_one_publisher_besides_the_operator() -> None:
    topics = [t for t in _definitions()["topic_permissions"] if t["user"] != "saga-admin"]
    for event_type in ORDER_SAGA.events:
        publishers = [t["user"] for t in topics if re.fullmatch(t["write"], event_type)]
        assert len(publishers) == 1, (event_type, publishers)


def test_no_service_may_write_to_the_default_exchange_or_another_services_names() -> None:
    permissions = {p["user"]: p for p in _definitions()["permissions"]}
    for service in SERVICES:
        others = [s for s in SERVICES if s != service]
        for kind in ("configure", "write", "read"):
            pattern = re.compile(permissions[service][kind])
            assert not pattern.search("amq.default"), (service, kind)
            assert pattern.fullmatch(f"{service}.dlq") or kind == "write"
            for other in others:
                for name in (f"{other}.dlq", f"{other}.dlx", f"{other}.order.created"):
                    assert not pattern.search(name), (service, kind, name)


# -- PostgreSQL ------------------------------------------------------------------------


def _postgres_init() -> tuple[dict[str, str], dict[str, str]]:
    text = POSTGRES_INIT.read_text()
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)';", text))
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", text))
    for database in databases:
        assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;" in text
    return roles, databases


def test_the_init_script_makes_one_role_and_database_per_service() -> None:
    roles, databases = _postgres_init()
    assert set(roles) == set(SERVICES)
    assert databases == {s: s for s in SERVICES}


# -- Dockerfile ------------------------------------------------------------------------


def _dockerfile() -> str:
    # Joined continuation lines, without comments.
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def test_the_dockerfile_builds_any_service_by_argument_on_a_slim_base() -> None:
    text = _dockerfile()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11[\d.]*-slim(-\w+)?", base.group(1))
    accepted = re.search(r'case "\$\{SERVICE\}" in\s+(\S+)\)', text)
    assert accepted is not None
    assert set(accepted.group(1).split("|")) == set(SERVICES)


def test_the_image_runs_as_an_unprivileged_user_in_production_mode() -> None:
    runtime = _dockerfile().split(" AS runtime", 1)[1]
    user = re.findall(r"^USER (\S+)$", runtime, flags=re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in {"root", "0"}
    assert "SAGAKIT_ENV=production" in runtime


def test_the_image_installs_hashed_pins_then_the_workspace_packages_without_resolving() -> None:
    text = _dockerfile()
    assert "--require-hashes" in text
    assert re.search(r"-r deploy/requirements/\$\{SERVICE\}\.txt", text)
    assert re.search(r"pip install --no-deps /wheels/\*\.whl", text)
    # Local paths, each with ./ (pip would take a bare "shared" for a package on the index).
    built = re.search(r"pip wheel [^\n]*--wheel-dir /wheels ([^&\n]*)", text)
    assert built is not None
    assert built.group(1).split() == ["./shared", "./contracts", "./services/${SERVICE}"]
    copied = set(re.findall(r"^COPY (\S+?)/? \S+$", text, flags=re.MULTILINE))
    assert {"shared", "contracts", "services/${SERVICE}"} <= copied


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_entry_point_exists(service: str) -> None:
    text = _dockerfile()
    app = re.search(r"SAGAKIT_APP=\$\{SERVICE\}(\S+)", text)
    assert app is not None
    assert 'exec faststream run --factory \\"$SAGAKIT_APP\\"' in text
    module_name, _, attribute = f"{service}{app.group(1)}".partition(":")
    module = importlib.import_module(module_name)
    # A factory: the app is built (and the environment read) when FastStream calls it.
    assert isinstance(module.__dict__[attribute](), FastStream)


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_has_every_workspace_package_the_service_needs(service: str) -> None:
    # The Dockerfile copies shared/, contracts/ and the service; nothing else may be needed.
    copied = {"sagakit", "order-contracts", f"{service}-service"}
    assert set(_workspace_closure(f"{service}-service")) <= copied


# -- requirements ----------------------------------------------------------------------


def _workspace_packages() -> dict[str, Path]:
    pyprojects = [
        ROOT / "shared" / "pyproject.toml",
        ROOT / "contracts" / "pyproject.toml",
        *sorted((ROOT / "services").glob("*/pyproject.toml")),
    ]
    return {tomllib.loads(p.read_text())["project"]["name"]: p for p in pyprojects}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _workspace_closure(package: str) -> Iterator[str]:
    workspace = _workspace_packages()
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        yield name
        project = tomllib.loads(workspace[name].read_text())["project"]
        todo += [_name(d) for d in project.get("dependencies", []) if _name(d) in workspace]


def _direct_pins(package: str) -> dict[str, str]:
    workspace = _workspace_packages()
    pins: dict[str, str] = {}
    for name in _workspace_closure(package):
        for requirement in tomllib.loads(workspace[name].read_text())["project"]["dependencies"]:
            if _name(requirement) in workspace:
                continue
            # An environment marker may follow the pin ("uvloop==0.23.0; sys_platform != 'win32'").
            match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^;\s]+)(\s*;.*)?", requirement)
            assert match is not None, f"{name}: {requirement!r} is not pinned exactly"
            pins[_name(match.group(1))] = match.group(3)
    return pins


def _locked(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {
        _name(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+?)(?: ;.*)? \\$", text, flags=re.MULTILINE)
    }


@pytest.mark.parametrize("service", SERVICES)
def test_the_requirements_file_carries_every_pin_of_the_pyprojects(service: str) -> None:
    path = REQUIREMENTS / f"{service}.txt"
    assert path.exists(), "run deploy/export-requirements.sh"
    locked = _locked(path)
    for name, version in _direct_pins(f"{service}-service").items():
        assert locked.get(name) == version, f"{name}=={version}: run deploy/export-requirements.sh"
    assert not set(locked) & {"sagakit", "order-contracts", f"{service}-service"}


@pytest.mark.parametrize("path", sorted(REQUIREMENTS.glob("*.txt")), ids=lambda p: p.name)
def test_requirements_files_are_hashed_and_name_no_package_index(path: Path) -> None:
    text = path.read_text()
    assert "://" not in text
    for option in INDEX_OPTIONS:
        assert option not in text
    requirements = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for requirement in filter(str.strip, requirements):
        assert "--hash=sha256:" in requirement, requirement.splitlines()[0]


def test_the_build_backend_is_pinned_as_the_pyprojects_pin_it() -> None:
    backends = {
        req
        for p in _workspace_packages().values()
        for req in tomllib.loads(p.read_text())["build-system"]["requires"]
    }
    assert len(backends) == 1
    name, version = next(iter(backends)).split("==")
    assert _locked(REQUIREMENTS / "build.txt")[name] == version


def test_importing_a_service_reads_no_environment() -> None:
    """Settings are read by the factory, when FastStream calls it, not at import."""
    modules = [f"{service}_service.main" for service in SERVICES]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from inventory_service.main import create_app\n"
        "try:\n"
        "    create_app()\n"
        "except ValueError as error:\n"
        "    sys.exit(0 if 'prefetch' in str(error) else 3)\n"
        "sys.exit(4)\n"
    )
    # A setting every service would refuse: importing must not notice, building must.
    broken = {f"{service.upper()}_PREFETCH": "not-a-number" for service in SERVICES}
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **broken},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-3000:]
