"""The saga tracker as a FastStream service: it watches every event and commands nothing.

It consumes a durable quorum queue of its own, ``tracker.events``, bound with ``#`` to the
flow's exchange, records each event once (by event id) in its own database, and keeps the
stuck-saga gauge up to date. It never publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from faststream import AckPolicy, FastStream
from faststream.message import StreamMessage
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from sagakit._context import utc_now
from sagakit._exceptions import InvalidMessage
from sagakit.broker._failover import rabbit_broker
from sagakit.broker._topology import DELIVERY_LIMIT, flow_exchange
from sagakit.observability._health import HttpEndpoint, broker_check, store_check
from sagakit.observability._logging import BROKER_LOGGER
from sagakit.observability._metrics import TRACKER_EVENTS, TRACKER_SAGAS, TRACKER_STUCK
from sagakit.observability._setup import observe
from sagakit.runtime._settings import ParticipantSettings
from sagakit.spec._spec import SagaSpec
from sagakit.store._retention import Pruner, tracker_pruner
from sagakit.tracker._model import decode_event
from sagakit.tracker._store import TrackerStore

if TYPE_CHECKING:
    from sagakit.console._server import ConsoleServer

logger = logging.getLogger("sagakit.tracker")

TRACKER_QUEUE = "tracker.events"
# A failure to record (the database is away) sends the message back after this pause.
_REQUEUE_PAUSE_SECONDS = 1.0


class TrackerSettings(ParticipantSettings):
    """The tracker's settings: ``TRACKER_*`` variables.

    Besides the shared ones (``TRACKER_RABBITMQ_URL``, ``TRACKER_DATABASE_URL`` — SQLite
    ``var/tracker.db`` by default —, ``TRACKER_METRICS_PORT``, ``TRACKER_HEALTH_PORT``,
    ``TRACKER_LOG_FORMAT``, ``TRACKER_LOG_LEVEL``): ``TRACKER_STUCK_AFTER_SECONDS``, how long
    a saga may go without an event before it counts as stuck,
    ``TRACKER_SCAN_INTERVAL_SECONDS``, how often the stuck-saga gauge is refreshed, and
    ``TRACKER_RETENTION_DAYS`` (7), how long an ended saga stays after its last event.
    The console: ``TRACKER_CONSOLE_PORT`` (off when unset), ``TRACKER_CONSOLE_HOST``
    (127.0.0.1), ``TRACKER_OPERATOR_TOKEN`` (read-only without one) and
    ``TRACKER_JAEGER_URL`` (trace ids link to it).
    """

    model_config = SettingsConfigDict(
        env_prefix="TRACKER_", extra="ignore", hide_input_in_errors=True
    )
    service_name: ClassVar[str] = "tracker"

    prefetch: int = Field(default=64, ge=1)
    stuck_after_seconds: float = Field(default=60.0, gt=0)
    scan_interval_seconds: float = Field(default=5.0, gt=0)
    # The web console (sagakit/console): off unless a port is set; on 127.0.0.1 unless
    # told otherwise; read-only unless an operator token is set.
    console_port: int | None = Field(default=None, ge=0, le=65535)
    console_host: str = "127.0.0.1"
    operator_token: SecretStr | None = None
    jaeger_url: str | None = None

    @property
    def stuck_after(self) -> timedelta:
        """``stuck_after_seconds`` as a timedelta."""
        return timedelta(seconds=self.stuck_after_seconds)


@dataclass(frozen=True, slots=True)
class TrackerService:
    """The tracker's app and what it runs on; ``app`` is what ``faststream run`` starts."""

    app: FastStream
    broker: RabbitBroker
    store: TrackerStore
    settings: TrackerSettings
    spec: SagaSpec
    endpoints: tuple[HttpEndpoint, ...] = field(default=())
    pruner: Pruner | None = None
    console: ConsoleServer | None = None


def tracker_queue() -> RabbitQueue:
    """The tracker's durable quorum queue, bound to every event of the flow."""
    return RabbitQueue(
        TRACKER_QUEUE,
        durable=True,
        queue_type=QueueType.QUORUM,
        routing_key="#",
        arguments={"x-delivery-limit": DELIVERY_LIMIT},
    )


def build_tracker(
    spec: SagaSpec, settings: TrackerSettings | None = None, *, configure_logs: bool = True
) -> TrackerService:
    """The tracker of ``spec``'s flow, from ``settings`` (default: the environment).

    Args:
        spec: The flow whose events are tracked.
        settings: Broker, database, stuck threshold, ports and logging.
        configure_logs: Set up the root logger from the settings when the app starts.
    """
    settings = settings or TrackerSettings()
    broker = rabbit_broker(
        settings.broker_urls,
        default_channel=Channel(prefetch_count=settings.prefetch),
        app_id="tracker",
        graceful_timeout=15.0,
        logger=logging.getLogger(BROKER_LOGGER),
    )
    store = TrackerStore(settings.database_url, spec=spec)
    known = frozenset(spec.events)

    @broker.subscriber(
        tracker_queue(),
        flow_exchange(spec.exchange),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_body,
        # Never an RPC: a sender's reply_to must not make the tracker publish anywhere.
        no_reply=True,
        title=TRACKER_QUEUE,
        description="The saga tracker: every event of the flow, recorded once.",
    )
    async def track(body: bytes, message: RabbitMessage) -> None:
        await _track(store, known, body, message)

    app = FastStream(broker, logger=logging.getLogger("sagakit.app"))
    endpoints = observe(
        app,
        service="tracker",
        broker=broker,
        checks={"broker": broker_check(broker), "store": store_check(store.store)},
        queues={},
        log_format=settings.log_format,
        log_level=settings.log_level,
        metrics_port=settings.metrics_port,
        health_port=settings.health_port,
        configure_logs=configure_logs,
        metrics="tracker",
        broker_metrics=settings.broker_metrics,
    )
    scanner: list[asyncio.Task[None]] = []
    pruner = tracker_pruner(store, settings)
    console = _console(store, settings)

    @app.on_startup
    async def prepare_store() -> None:
        await store.create_schema()

    @app.after_startup
    async def start_scanning() -> None:
        scanner.append(asyncio.create_task(watch_stuck(store, settings), name="tracker-stuck"))
        pruner.start()
        if console is not None:
            await console.start()

    @app.on_shutdown
    async def stop_scanning() -> None:
        if console is not None:
            await console.stop()
        await pruner.stop()
        while scanner:
            task = scanner.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @app.after_shutdown
    async def close_store() -> None:
        await store.dispose()

    return TrackerService(
        app=app,
        broker=broker,
        store=store,
        settings=settings,
        spec=spec,
        endpoints=endpoints,
        pruner=pruner,
        console=console,
    )


def _console(store: TrackerStore, settings: TrackerSettings) -> ConsoleServer | None:
    if settings.console_port is None:
        return None
    # Here, not at the top: the console reads the tracker's modules (a cycle otherwise).
    from sagakit.console._app import ConsoleSettings, console_app
    from sagakit.console._server import ConsoleServer

    token = settings.operator_token.get_secret_value() if settings.operator_token else None
    app = console_app(
        store,
        ConsoleSettings(
            broker_url=",".join(settings.broker_urls)
            if len(settings.broker_urls) > 1
            else settings.broker_urls[0],
            stuck_after=settings.stuck_after,
            operator_token=token or None,
            jaeger_url=settings.jaeger_url,
        ),
    )
    return ConsoleServer(app, host=settings.console_host, port=settings.console_port)


async def _raw_body(message: StreamMessage[Any]) -> Any:
    # The tracker decodes for itself: a body FastStream cannot parse must still be acked.
    return message.body


async def _track(
    store: TrackerStore, known: frozenset[str], body: bytes, message: RabbitMessage
) -> None:
    try:
        event = decode_event(body, message.headers, spec=store.spec)
    except InvalidMessage as exc:
        TRACKER_EVENTS.labels("unknown", "undecodable").inc()
        logger.warning("ignored message %s: %s", message.message_id, exc.reason)
        await message.ack()
        return
    label = event.event_type if event.event_type in known else "other"
    try:
        view = await store.record(event)
    except Exception:
        logger.exception("could not record %s; requeueing", event.event_type)
        await asyncio.sleep(_REQUEUE_PAUSE_SECONDS)
        await message.nack()
        return
    TRACKER_EVENTS.labels(label, "duplicate" if view is None else "recorded").inc()
    if view is not None:
        logger.debug("saga is %s after %s", view.state.value, event.event_type)
    await message.ack()


async def watch_stuck(store: TrackerStore, settings: TrackerSettings) -> None:
    """Refresh the saga gauges and log each saga that became stuck, until cancelled."""
    reported: set[str] = set()
    while True:
        try:
            reported = await scan_once(store, settings.stuck_after, reported)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("stuck-saga scan failed")
        await asyncio.sleep(settings.scan_interval_seconds)


async def scan_once(store: TrackerStore, stuck_after: timedelta, reported: set[str]) -> set[str]:
    """One pass of ``watch_stuck``; returns the stuck sagas already reported."""
    now = utc_now()
    TRACKER_STUCK.set(await store.count_stuck(stuck_after=stuck_after, now=now))
    for state, count in (await store.count_by_state()).items():
        TRACKER_SAGAS.labels(state.value).set(count)
    stuck = await store.sagas(stuck_after=stuck_after, now=now, limit=1000)
    for row in stuck:
        if row.saga_id not in reported:
            logger.warning(
                "saga is stuck in %s: %s (last event %s)",
                row.state.value,
                row.stuck_reason(now=now, stuck_after=stuck_after),
                row.last_event_type,
                extra={"saga_id": row.saga_id, "event_type": row.last_event_type},
            )
    return {row.saga_id for row in stuck}
