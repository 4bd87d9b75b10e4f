"""The choreography spec and its checker.

The AsyncAPI documents derived from a spec and a service are written by ``saga contracts``
(``sagakit.cli``).
"""

from sagakit.spec._checker import (
    FlowPath,
    Gap,
    GapKind,
    Hop,
    all_paths,
    check_choreography,
    emitted_events,
    walk,
)
from sagakit.spec._spec import ReactionSpec, SagaSpec, StepSpec, event_models

__all__ = [
    "FlowPath",
    "Gap",
    "GapKind",
    "Hop",
    "ReactionSpec",
    "SagaSpec",
    "StepSpec",
    "all_paths",
    "check_choreography",
    "emitted_events",
    "event_models",
    "walk",
]
