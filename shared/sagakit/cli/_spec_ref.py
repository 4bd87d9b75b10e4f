"""Finding the flow a command works on: ``SAGA_SPEC=module:ATTRIBUTE`` or the installed one."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from sagakit._exceptions import SpecError
from sagakit.spec._spec import SagaSpec

SPEC_ENV = "SAGA_SPEC"

SpecOption = Annotated[
    str | None,
    typer.Option("--spec", help="module:ATTRIBUTE of the SagaSpec (or $SAGA_SPEC)"),
]
"""The ``--spec`` option every generic command takes."""


def _reference(reference: str | None) -> str:
    reference = reference or os.environ.get(SPEC_ENV)
    if reference is None:
        installed = list(entry_points(group="sagakit.specs"))
        if len(installed) != 1:
            names = ", ".join(ep.name for ep in installed) or "none"
            raise SpecError(f"set {SPEC_ENV}=module:ATTRIBUTE (installed flows: {names})")
        reference = installed[0].value
    return reference


def spec_home(reference: str | None = None) -> Path | None:
    """The folder that holds the spec's top-level package (a flow's contracts project),
    wherever the command runs; None for a module that is not a file."""
    module_name = _reference(reference).partition(":")[0]
    module = importlib.import_module(module_name.partition(".")[0])
    origin = getattr(module, "__file__", None)
    return Path(origin).resolve().parent.parent if origin else None


def load_spec(reference: str | None = None) -> SagaSpec:
    """The SagaSpec named by ``reference``, ``$SAGA_SPEC``, or the one installed flow.

    Installed flows name their spec in the ``sagakit.specs`` entry-point group.
    """
    reference = _reference(reference)
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        raise SpecError(f"{SPEC_ENV} must look like module:ATTRIBUTE, got {reference!r}")
    spec = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(spec, SagaSpec):
        raise SpecError(f"{reference} is not a SagaSpec")
    return spec
