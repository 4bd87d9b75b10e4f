"""Composition: a participant, its settings, a broker and a store make one FastStream app."""

from __future__ import annotations

from dataclasses import dataclass

from faststream import FastStream
from faststream.rabbit import Channel, RabbitBroker

from ._logging import configure_logging
from ._participant import Participant
from ._runtime import SagaRuntime
from ._settings import ParticipantSettings
from ._store import Store


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


def build_service(
    participant: Participant, settings: ParticipantSettings, *, configure_logs: bool = True
) -> SagaService:
    """Wire ``participant`` to a RabbitBroker and a Store from ``settings``.

    Args:
        participant: The participant with its handlers registered.
        settings: Where the broker and the database are, and the retry budgets.
        configure_logs: Set up the root logger from the settings when the app starts.
    """
    broker = RabbitBroker(
        settings.rabbitmq_url,
        default_channel=Channel(prefetch_count=settings.prefetch, on_return_raises=True),
        app_id=participant.name,
        graceful_timeout=15.0,
    )
    store = Store(
        settings.database_url,
        metadata=[participant.tables] if participant.tables is not None else [],
    )
    runtime = SagaRuntime(participant, broker=broker, store=store, settings=settings)
    app = FastStream(broker)

    @app.on_startup
    async def prepare() -> None:
        if configure_logs:
            configure_logging(
                service=participant.name, log_format=settings.log_format, level=settings.log_level
            )
        await prepare_store(participant, store)

    @app.after_startup
    async def start_runtime() -> None:
        await runtime.start()

    @app.on_shutdown
    async def stop_runtime() -> None:
        await runtime.stop()

    @app.after_shutdown
    async def close_store() -> None:
        await store.dispose()

    return SagaService(app=app, broker=broker, store=store, runtime=runtime, settings=settings)


async def prepare_store(participant: Participant, store: Store) -> None:
    """Create the tables, then run the participant's ``initialize`` hook."""
    await store.create_schema()
    if participant.initialize is not None:
        async with store.transaction() as session:
            await participant.initialize(session)
