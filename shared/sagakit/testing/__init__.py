"""In-memory testing of participants: FastStream's TestRabbitBroker plus saga-aware helpers,
and the saga rules every participant keeps as a test class to subclass
(``ParticipantConformance``).

Example:
    ```python
    async with ParticipantHarness(create_service(settings)) as harness:
        created = harness.start_saga(order)
        await harness.publish(created)
        assert harness.emitted_types == ["inventory.reserved"]
    ```
"""

from sagakit._exceptions import ServiceStartError
from sagakit.testing._conformance import ParticipantConformance
from sagakit.testing._harness import (
    INJECTED_REASON,
    EffectProbe,
    Fault,
    FlowHarness,
    FlowRun,
    Injection,
    ParkedMessage,
    ParticipantHarness,
    assert_all_or_nothing,
)
from sagakit.testing._processes import QueueProbe, ServiceApp, ServiceProcesses, consumed_queues

__all__ = [
    "EffectProbe",
    "Fault",
    "FlowHarness",
    "FlowRun",
    "INJECTED_REASON",
    "Injection",
    "ParkedMessage",
    "ParticipantConformance",
    "ParticipantHarness",
    "QueueProbe",
    "ServiceApp",
    "ServiceProcesses",
    "ServiceStartError",
    "assert_all_or_nothing",
    "consumed_queues",
]
