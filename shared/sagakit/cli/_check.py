"""``saga check``: the choreography checker, on the spec and optionally the real services."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from sagakit._exceptions import SpecError
from sagakit.runtime._app import SagaService
from sagakit.runtime._participant import Subscription
from sagakit.spec._checker import check_choreography
from sagakit.spec._spec import SagaSpec

from . import app
from ._spec_ref import SpecOption, load_spec

SERVICE_FACTORY = "{participant}_service.main:create_service"
"""Where ``--with-services`` finds each participant's service: the FastStream layout of a
service package, ``<participant>_service/main.py`` with ``create_service()``."""


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A participant's service, built by its own factory, and the module that built it."""

    participant: str
    module: str
    service: SagaService


def load_services(
    spec: SagaSpec, *, factory: str = SERVICE_FACTORY, rabbitmq_url: str | None = None
) -> list[LoadedService]:
    """Build the service of every participant of ``spec`` from its settings (the
    environment). Building connects to nothing.

    Args:
        spec: The flow whose participants to load.
        factory: ``module:callable`` with ``{participant}`` in place of each name; the
            callable takes the service's settings, or None for the environment's.
        rabbitmq_url: Build each service for this broker instead of the configured one.
    """
    loaded = []
    for participant in spec.participants():
        reference = factory.format(participant=participant)
        module_name, _, attribute = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise SpecError(f"no service for {participant!r}: {error}") from error
        create: Callable[..., SagaService] | None = getattr(module, attribute or "", None)
        if create is None:
            raise SpecError(f"{reference} does not exist")
        service = create()
        if rabbitmq_url is not None:
            service = create(service.settings.model_copy(update={"rabbitmq_url": rabbitmq_url}))
        if service.runtime.name != participant:
            raise SpecError(f"{reference} builds {service.runtime.name!r}, not {participant!r}")
        loaded.append(LoadedService(participant, module_name, service))
    return loaded


def service_subscriptions(services: list[LoadedService]) -> list[Subscription]:
    """What the services really subscribe to, as their runtimes registered it."""
    return [sub for loaded in services for sub in loaded.service.runtime.subscriptions]


@app.command("check")
def check(
    spec: SpecOption = None,
    with_services: Annotated[
        bool,
        typer.Option(
            "--with-services",
            help="also check what each participant's service really subscribes to",
        ),
    ] = False,
    factory: Annotated[
        str,
        typer.Option("--service-factory", help="where each participant's service is built"),
    ] = SERVICE_FACTORY,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check the choreography: compensations, paths, producers and consumers, subscriptions.

    Exits 0 and prints "no gap" when every promise holds, 1 with one line per gap otherwise.
    """
    flow = load_spec(spec)
    subscriptions = None
    against = "the spec"
    if with_services:
        services = load_services(flow, factory=factory)
        subscriptions = service_subscriptions(services)
        against += " and the subscriptions of " + ", ".join(s.participant for s in services)
    gaps = check_choreography(flow, subscriptions)
    if as_json:
        document = {
            "saga_type": flow.saga_type,
            "checked": against,
            "ok": not gaps,
            "gaps": [{"kind": gap.kind.value, "message": gap.message} for gap in gaps],
        }
        typer.echo(json.dumps(document, indent=2))
        if gaps:
            raise typer.Exit(1)
        return
    if not gaps:
        typer.echo(f"{flow.saga_type}: no gap ({against})")
        return
    typer.echo(f"{flow.saga_type}: {len(gaps)} gap{'s' if len(gaps) > 1 else ''} ({against})")
    for gap in gaps:
        typer.echo(f"- {gap.kind.value}: {gap.message}")
    raise typer.Exit(1)
