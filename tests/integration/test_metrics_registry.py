"""A running participant's /metrics: its own series, not the tracker's; FastStream's broker
metrics in the same registry when asked for (<P>BROKER_METRICS)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inventory_service.handlers import create_participant
from inventory_service.settings import InventorySettings
from order_contracts import ORDER_SAGA
from order_contracts.samples import sample_order
from sagakit import build_service
from sagakit.client import SagaClient

from tests.integration.test_health import _free_port, get, running, sample


async def test_broker_metrics_join_the_participants_own_registry(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    settings = InventorySettings(
        rabbitmq_url=rabbitmq_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db",
        metrics_port=port,
        broker_metrics=True,
    )
    service = build_service(create_participant(settings), settings, configure_logs=False)
    async with running(service), SagaClient(rabbitmq_url, ORDER_SAGA) as client:
        await client.start(sample_order())
        for _ in range(100):
            status, metrics = await get(port, "/metrics")
            if "faststream_received_messages_total{" in metrics and sample(
                metrics, "sagakit_events_consumed_total", event_type="order.created"
            ):
                break
            await asyncio.sleep(0.2)
    assert status == 200
    assert sample(metrics, "sagakit_events_consumed_total", event_type="order.created") >= 1
    received = [
        line
        for line in metrics.splitlines()
        if line.startswith("faststream_received_messages_total{")
    ]
    assert received, metrics[:2000]
    assert 'app_name="inventory"' in received[0]
    assert "sagakit_tracker_" not in metrics
