"""Composition: a participant, its settings, a broker and a store make one FastStream app."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from faststream import FastStream
from faststream.rabbit import Channel, RabbitBroker

from sagakit._exceptions import SpecError
from sagakit.broker._failover import rabbit_broker
from sagakit.observability._health import (
    HttpEndpoint,
    broker_check,
    consuming_check,
    publishing_check,
    store_check,
)
from sagakit.observability._logging import BROKER_LOGGER
from sagakit.observability._setup import observe
from sagakit.runtime import _step_results as step_results
from sagakit.runtime._participant import Participant
from sagakit.runtime._runtime import SagaRuntime
from sagakit.runtime._settings import ParticipantSettings
from sagakit.store._store import Store


@dataclass(frozen=True, slots=True)
class SagaService:
    """Everything one participant runs on; ``app`` is what ``faststream run`` starts.

    Building one connects to nothing: the broker connects when the app starts, the store on
    first use.
    """

    app: FastStream
    broker: RabbitBroker
    store: Store
    runtime: SagaRuntime
    settings: ParticipantSettings
    endpoints: tuple[HttpEndpoint, ...] = field(default=())


def build_service(
    participant: Participant,
    settings: ParticipantSettings | None = None,
    *,
    configure_logs: bool = True,
) -> SagaService:
    """Wire ``participant`` to a RabbitBroker and a Store from ``settings``.

    Args:
        participant: The participant with its handlers registered.
        settings: Where the broker and the database are, and the retry budgets; None to
            read ``<PARTICIPANT>_*`` from the environment (``ParticipantSettings.named``).
        configure_logs: Set up the root logger from the settings when the app starts.

    Raises:
        SpecError: ``settings`` were made for another participant.

    When the app starts it also sets up tracing from ``OTEL_*`` and, when their ports are
    set, serves ``/livez`` and ``/readyz`` (broker connected, store taking writes, no
    deliveries held by the circuit breaker, publishes confirmed) and ``/metrics``.
    """
    if settings is None:
        settings = ParticipantSettings.named(participant.name)()
    if settings.service_name not in {ParticipantSettings.service_name, participant.name}:
        raise SpecError(
            f"{type(settings).__name__} are the settings of {settings.service_name!r}, not of "
            f"the participant {participant.name!r}: name one participant in both "
            f"(class {type(settings).__name__}(ParticipantSettings, "
            f"participant={participant.name!r}))"
        )
    broker = rabbit_broker(
        settings.broker_urls,
        default_channel=Channel(prefetch_count=settings.prefetch, on_return_raises=True),
        app_id=participant.name,
        graceful_timeout=15.0,
        # FastStream's lines go through the root handler, with the saga fields.
        logger=logging.getLogger(BROKER_LOGGER),
        log_level=logging.getLevelNamesMapping()[settings.message_log_level],
    )
    store = Store(
        settings.database_url,
        # sagakit's step results (_step_results.py) beside the service's own tables.
        metadata=[step_results.metadata, *filter(None, [participant.tables])],
    )
    runtime = SagaRuntime(participant, broker=broker, store=store, settings=settings)
    # The app's first line ("starting") comes before logging is configured: a logger of
    # sagakit's keeps it out of a JSON log instead of printing it in another format.
    app = FastStream(
        broker,
        logger=logging.getLogger("sagakit.app"),
        lifespan=functools.partial(_closing_on_failure, broker),
    )
    endpoints = observe(
        app,
        service=participant.name,
        broker=broker,
        checks={
            "broker": broker_check(broker),
            "store": store_check(store),
            "consuming": consuming_check(runtime.breaker),
            "publishing": publishing_check(runtime.breaker),
        },
        queues={sub.queue: (sub.event_type, sub.name) for sub in runtime.subscriptions},
        log_format=settings.log_format,
        log_level=settings.log_level,
        metrics_port=settings.metrics_port,
        health_port=settings.health_port,
        configure_logs=configure_logs,
        broker_metrics=settings.broker_metrics,
    )

    @app.on_startup
    async def prepare() -> None:
        await prepare_store(participant, store)

    @app.after_startup
    async def start_runtime() -> None:
        await runtime.start()
        # What startup built (modules, mappers, schemas) lives as long as the process: out
        # of the collector's sight, full collections stop walking it on every message burst.
        gc.freeze()
        # What a delivery allocates is nearly all freed by reference counting: at the
        # default threshold (700) the young collections cost about 5% of a message's CPU
        # for little they could free (bench/README.md, Round 5).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    @app.on_shutdown
    async def stop_runtime() -> None:
        await runtime.stop()

    @app.after_shutdown
    async def close_store() -> None:
        # Handlers that finished while the broker stopped may have sent marks still pending.
        await runtime.relay.settle()
        await store.dispose()

    return SagaService(
        app=app,
        broker=broker,
        store=store,
        runtime=runtime,
        settings=settings,
        endpoints=endpoints,
    )


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two collections of the youngest generation, once the app runs."""


@contextlib.asynccontextmanager
async def _closing_on_failure(broker: RabbitBroker) -> AsyncIterator[None]:
    # When the app fails (the connection lost while subscribers start), the robust
    # connection is left reconnecting, and it survives the cancellation at exit: the
    # process would hang for ever, its consumers restored for an app that is gone, holding
    # deliveries it never acks (the chaos run found one). Closed, the process exits.
    try:
        yield
    except BaseException:
        try:
            await broker.stop()
        except Exception:
            # Stopping subscribers on a dead channel fails before the connection is closed.
            connection = getattr(broker, "_connection", None)
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        raise


async def prepare_store(participant: Participant, store: Store) -> None:
    """Create the tables, then run the participant's ``initialize`` hook."""
    await store.create_schema()
    if participant.initialize is not None:
        async with store.transaction() as session:
            await participant.initialize(session)
