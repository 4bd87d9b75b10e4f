"""Each service serves a registry of its own, in the format the scraper asks for."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from sagakit.observability import HttpEndpoint
from sagakit.observability._health import metrics_routes
from sagakit.observability._metrics import TRACKER_SAGAS, service_registry


def _names(kind: str) -> set[str]:
    registry = service_registry(kind)  # type: ignore[arg-type]
    return {metric.name for metric in registry.collect()}


def test_a_participant_exports_no_tracker_series_and_the_tracker_no_participant_series() -> None:
    participant, tracker = _names("participant"), _names("tracker")
    assert "sagakit_events_consumed" in participant
    assert "sagakit_step_duration_seconds" in participant
    assert not {name for name in participant if name.startswith("sagakit_tracker_")}
    assert {"sagakit_tracker_sagas", "sagakit_tracker_stuck_sagas"} <= tracker
    assert "sagakit_events_consumed" not in tracker
    # both: the store's retention series and the process'
    for names in (participant, tracker):
        assert "sagakit_store_rows" in names
        assert "process_cpu_seconds" in names


def test_a_tracker_series_set_in_the_process_shows_in_the_trackers_registry_only() -> None:
    TRACKER_SAGAS.labels(state="fulfilled").set(3)
    assert b'sagakit_tracker_sagas{state="fulfilled"} 3.0' in generate_latest(
        service_registry("tracker")
    )
    assert b"sagakit_tracker_sagas" not in generate_latest(service_registry("participant"))


async def _get(port: int, accept: str | None) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "GET /metrics HTTP/1.1\r\nHost: x\r\n"
    if accept is not None:
        head += f"Accept: {accept}\r\n"
    writer.write((head + "\r\n").encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    headers, _, body = response.partition("\r\n\r\n")
    content_type = next(
        line.split(":", 1)[1].strip()
        for line in headers.split("\r\n")
        if line.lower().startswith("content-type:")
    )
    return content_type, body


async def test_metrics_negotiate_openmetrics_by_accept() -> None:
    endpoint = HttpEndpoint(metrics_routes(service_registry("participant")), port=0)
    await endpoint.start()
    try:
        content_type, body = await _get(
            endpoint.port, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )
        assert content_type.startswith("application/openmetrics-text")
        assert body.rstrip().endswith("# EOF")
        plain_type, plain = await _get(endpoint.port, None)
        assert plain_type.startswith("text/plain")
        assert "# EOF" not in plain
        assert "sagakit_events_consumed_total" in plain
    finally:
        await endpoint.stop()
