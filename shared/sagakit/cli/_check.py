"""``saga check``: the choreography checker, on the spec and optionally the real services."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated

import typer

from sagakit._exceptions import SpecError
from sagakit.runtime._app import SagaService
from sagakit.runtime._participant import Subscription
from sagakit.spec._checker import check_choreography
from sagakit.spec._spec import SagaSpec

from . import app
from ._spec_ref import SpecOption, load_spec

SERVICES_ENV = "SAGA_SERVICES"
SERVICES_GROUP = "sagakit.services"
SERVICE_FACTORY = "{participant}_service.main:create_service"
"""The last place ``--with-services`` looks for a participant's service (see
``service_factories``)."""


def service_factories(spec: SagaSpec, *, factory: str | None = None) -> dict[str, str]:
    """Where each participant's service is built (``module:callable``), first found first:

    1. ``factory``, a pattern with ``{participant}`` in place of each name;
    2. ``$SAGA_SERVICES``: ``participant=module:callable`` pairs, separated by commas;
    3. an entry point of the ``sagakit.services`` group named ``<saga_type>.<participant>``
       (or ``<participant>``), which a service's package declares;
    4. ``<participant>_service.main:create_service``.
    """
    named: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in os.environ.get(SERVICES_ENV, "").split(","))):
        participant, _, reference = pair.partition("=")
        if not reference:
            raise SpecError(f"{SERVICES_ENV}: {pair!r} is not participant=module:callable")
        named[participant.strip()] = reference.strip()
    installed = {ep.name: ep.value for ep in entry_points(group=SERVICES_GROUP)}
    found = {}
    for participant in spec.participants():
        found[participant] = (
            (factory.format(participant=participant) if factory else None)
            or named.get(participant)
            or installed.get(f"{spec.saga_type}.{participant}")
            or installed.get(participant)
            or SERVICE_FACTORY.format(participant=participant)
        )
    return found


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A participant's service, built by its own factory, and the module that built it."""

    participant: str
    module: str
    service: SagaService


def load_services(
    spec: SagaSpec, *, factory: str | None = None, rabbitmq_url: str | None = None
) -> list[LoadedService]:
    """Build the service of every participant of ``spec`` from its settings (the
    environment). Building connects to nothing.

    Args:
        spec: The flow whose participants to load.
        factory: ``module:callable`` with ``{participant}`` in place of each name, or None
            to find each service as ``service_factories`` says; the callable takes the
            service's settings, or None for the environment's.
        rabbitmq_url: Build each service for this broker instead of the configured one.
    """
    loaded = []
    for participant, reference in service_factories(spec, factory=factory).items():
        module_name, _, attribute = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise SpecError(
                f"no service for {participant!r} at {reference} ({error}): declare it as an "
                f"entry point of {SERVICES_GROUP} named {spec.saga_type}.{participant}, or "
                f"set {SERVICES_ENV}={participant}=module:callable"
            ) from error
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
        str | None,
        typer.Option(
            "--service-factory",
            help="where each participant's service is built, {participant} in place of its "
            f"name (default: ${SERVICES_ENV}, the {SERVICES_GROUP} entry points, then "
            f"{SERVICE_FACTORY})",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check the choreography: compensations, paths, producers and consumers, subscriptions.

    Exits 0 and prints "no gap" when every promise holds, 1 with one line per gap otherwise.
    """
    try:
        flow = load_spec(spec)
    except SpecError as error:
        # A spec that sagakit could not run is refused when it is built (its module does
        # not even import): say what to change, as for any gap.
        typer.echo(f"the spec is refused: {error}")
        raise typer.Exit(1) from None
    subscriptions = None
    against = "the spec"
    if with_services:
        try:
            services = load_services(flow, factory=factory)
        except SpecError as error:
            typer.echo(f"{flow.saga_type}: a service is refused: {error}")
            raise typer.Exit(1) from None
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
