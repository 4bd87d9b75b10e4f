"""Finding the flow a command works on: ``SAGA_SPEC=module:ATTRIBUTE`` or the installed one."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
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


def load_spec(reference: str | None = None) -> SagaSpec:
    """The SagaSpec named by ``reference``, ``$SAGA_SPEC``, or the one installed flow.

    Installed flows name their spec in the ``sagakit.specs`` entry-point group.
    """
    reference = reference or os.environ.get(SPEC_ENV)
    if reference is None:
        installed = list(entry_points(group="sagakit.specs"))
        if len(installed) != 1:
            names = ", ".join(ep.name for ep in installed) or "none"
            raise SpecError(f"set {SPEC_ENV}=module:ATTRIBUTE (installed flows: {names})")
        reference = installed[0].value
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        raise SpecError(f"{SPEC_ENV} must look like module:ATTRIBUTE, got {reference!r}")
    spec = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(spec, SagaSpec):
        raise SpecError(f"{reference} is not a SagaSpec")
    return spec
