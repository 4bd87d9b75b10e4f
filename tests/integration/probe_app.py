"""The probe participants as FastStream app factories, for ``faststream run --factory`` in a
process of their own.

Tests that need a consumer to die (the broker's delivery limit) run the probe participants
this way: ``tests.integration.probe_app:alpha`` or ``:beta``. The environment says where,
read when FastStream calls the factory: ``RABBITMQ_URL``, ``PROBE_DIR`` (databases,
``script.json`` and call counts, see ``Behaviour``) and optionally ``PROBE_DELIVERY_LIMIT``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from faststream import FastStream
from sagakit import SagaService

from .probe_flow import Behaviour, probe_services


def _services() -> list[SagaService]:
    directory = Path(os.environ.get("PROBE_DIR", "."))
    settings: dict[str, Any] = {}
    if "PROBE_DELIVERY_LIMIT" in os.environ:
        settings["delivery_limit"] = int(os.environ["PROBE_DELIVERY_LIMIT"])
    return probe_services(
        os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        str(directory),
        Behaviour(script_file=directory / "script.json", count_dir=directory / "calls"),
        **settings,
    )


def alpha() -> FastStream:
    """The alpha probe participant's app."""
    return _services()[0].app


def beta() -> FastStream:
    """The beta probe participant's app."""
    return _services()[1].app
