"""One probe participant as a FastStream app, for ``faststream run`` in a process of its own.

Tests that need a consumer to die (the broker's delivery limit) run the probe participants
this way: ``tests.integration.probe_app:alpha`` or ``:beta``. The environment says where:
``RABBITMQ_URL``, ``PROBE_DIR`` (databases, ``script.json`` and call counts, see
``Behaviour``) and optionally ``PROBE_DELIVERY_LIMIT``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .probe_flow import Behaviour, probe_services

_directory = Path(os.environ.get("PROBE_DIR", "."))
_settings: dict[str, Any] = {}
if "PROBE_DELIVERY_LIMIT" in os.environ:
    _settings["delivery_limit"] = int(os.environ["PROBE_DELIVERY_LIMIT"])
_alpha, _beta = probe_services(
    os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    str(_directory),
    Behaviour(script_file=_directory / "script.json", count_dir=_directory / "calls"),
    **_settings,
)
alpha = _alpha.app
beta = _beta.app
