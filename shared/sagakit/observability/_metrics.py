"""Prometheus metrics of a participant and of the tracker; served on ``/metrics``.

The metrics are defined once, in the process' default registry (where tests and embedding
code read them), and each service serves a registry of its own (``service_registry``): a
participant's holds the participant series, the store's and the process'; the tracker's the
tracker series, the store's and the process'. So no participant exports the tracker's
series, nor the tracker a participant's.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.registry import Collector

ServiceKind = Literal["participant", "tracker"]

EVENTS_CONSUMED = Counter(
    "sagakit_events_consumed_total", "Events consumed", ["participant", "event_type"]
)
EVENTS_PUBLISHED = Counter(
    "sagakit_events_published_total", "Events published", ["participant", "event_type"]
)
STEP_OUTCOMES = Counter(
    "sagakit_step_outcomes_total",
    "Outcomes of steps, compensations and reactions",
    ["participant", "step", "kind", "outcome"],
)
STEP_DURATION = Histogram(
    "sagakit_step_duration_seconds",
    "Time to handle one event, transaction and publish included",
    ["participant", "step", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RETRIES = Counter(
    "sagakit_retries_total", "Messages sent to a delay queue", ["participant", "step"]
)
DEAD_LETTERED = Counter(
    "sagakit_dead_lettered_total",
    "Messages parked in the dead-letter queue",
    ["participant", "kind"],
)
HEADERS_DROPPED = Counter(
    "sagakit_republish_headers_dropped_total",
    "Headers left out of a retried or parked message so that it fits the broker's frame limit",
    ["participant"],
)
OUTBOX_BACKLOG = Gauge("sagakit_outbox_backlog", "Events waiting in the outbox", ["participant"])

# Retention (_retention.py): set by the prune task, never on the hot path.
STORE_ROWS = Gauge(
    "sagakit_store_rows",
    "Rows in sagakit's tables of a service's store, counted after each prune pass",
    ["service", "table"],
)
STORE_PRUNED = Counter(
    "sagakit_store_pruned_rows_total", "Rows deleted by retention", ["service", "table"]
)
STORE_LAST_PRUNE = Gauge(
    "sagakit_store_last_prune_timestamp_seconds",
    "When the last prune pass that succeeded ended (unix seconds)",
    ["service"],
)

# The saga tracker's own metrics.
TRACKER_EVENTS = Counter(
    "sagakit_tracker_events_total",
    "Events the tracker saw, by what it did with them (recorded, duplicate, undecodable)",
    ["event_type", "result"],
)
TRACKER_STUCK = Gauge(
    "sagakit_tracker_stuck_sagas",
    "Sagas not ended that did not move for the stuck threshold or are past their deadline",
)
TRACKER_SAGAS = Gauge("sagakit_tracker_sagas", "Sagas the tracker knows, by state", ["state"])

# The circuit breaker of a participant (_breaker.py): deliveries held while a dependency it
# needs (its store, or the broker for publishing) is away.
BREAKER_OPEN = Gauge(
    "sagakit_breaker_open",
    "1 while deliveries are held because this dependency is away, else 0",
    ["participant", "dependency"],
)
BREAKER_TRIPS = Counter(
    "sagakit_breaker_trips_total",
    "Times the breaker opened because this dependency went away",
    ["participant", "dependency"],
)
BREAKER_PAUSED_SECONDS = Counter(
    "sagakit_breaker_paused_seconds_total",
    "Time deliveries were held because this dependency was away (grows during an outage)",
    ["participant", "dependency"],
)
HELD_DELIVERIES = Gauge(
    "sagakit_held_deliveries",
    "Deliveries held unacknowledged until the breaker closes",
    ["participant"],
)
HANDED_BACK = Counter(
    "sagakit_handed_back_total",
    "Held deliveries put back on their queue, without counting an attempt, after holding long",
    ["participant"],
)


PARTICIPANT_METRICS: tuple[Collector, ...] = (
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    STEP_OUTCOMES,
    STEP_DURATION,
    RETRIES,
    DEAD_LETTERED,
    HEADERS_DROPPED,
    OUTBOX_BACKLOG,
    BREAKER_OPEN,
    BREAKER_TRIPS,
    BREAKER_PAUSED_SECONDS,
    HELD_DELIVERIES,
    HANDED_BACK,
)
TRACKER_METRICS: tuple[Collector, ...] = (TRACKER_EVENTS, TRACKER_STUCK, TRACKER_SAGAS)
STORE_METRICS: tuple[Collector, ...] = (STORE_ROWS, STORE_PRUNED, STORE_LAST_PRUNE)
_PROCESS: tuple[Collector, ...] = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)


def service_registry(kind: ServiceKind) -> CollectorRegistry:
    """A registry with the series a service of ``kind`` exports, and nothing else."""
    registry = CollectorRegistry(auto_describe=True)
    own = PARTICIPANT_METRICS if kind == "participant" else TRACKER_METRICS
    for collector in (*own, *STORE_METRICS, *_PROCESS):
        registry.register(collector)
    return registry
