"""Runs a participant on a broker: its topology, its subscribers behind SagaMiddleware, the
outbox relay, the circuit breaker and pruning.

The saga rules are enforced below it, so that no service has to:
``_dispatcher.py`` (one delivery, retries, outages), ``_forward.py`` (steps),
``_compensation.py`` (compensations), ``_redelivery.py`` (retry, park, hand back),
``_events.py`` (the events emitted, through the outbox), ``_middleware.py`` (the delivery's
scope, bad input).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker, RabbitRouter

from sagakit._envelope import Envelope
from sagakit.broker._topology import ParticipantTopology, flow_exchange
from sagakit.runtime._breaker import CircuitBreaker, Dependency
from sagakit.runtime._compensation import Compensation
from sagakit.runtime._dispatcher import Dispatcher
from sagakit.runtime._events import Events
from sagakit.runtime._forward import ForwardStep
from sagakit.runtime._middleware import SagaMiddleware
from sagakit.runtime._participant import Participant, Subscription
from sagakit.runtime._redelivery import PROBE_TIMEOUT_SECONDS, Redelivery
from sagakit.runtime._relay import OutboxRelay
from sagakit.runtime._settings import ParticipantSettings
from sagakit.runtime._subscriber import consumer
from sagakit.spec._checker import emitted_events
from sagakit.store._retention import participant_pruner
from sagakit.store._store import Store

logger = logging.getLogger("sagakit.runtime")

# Declaring the topology at start-up outlasts a broker that is away for about this long.
_DECLARE_ATTEMPTS = 60
_DECLARE_PAUSE_SECONDS = 1.0


class SagaRuntime:
    """Binds a Participant to a RabbitBroker and a Store, and enforces the saga rules."""

    def __init__(
        self,
        participant: Participant,
        *,
        broker: RabbitBroker,
        store: Store,
        settings: ParticipantSettings,
    ) -> None:
        self.participant = participant
        self.spec = participant.spec
        self.broker = broker
        self.store = store
        self.settings = settings
        self.topology = ParticipantTopology(
            participant.name, self.spec.exchange, delivery_limit=settings.delivery_limit
        )
        self.exchange = flow_exchange(self.spec.exchange)
        self.subscriptions = participant.subscriptions()
        self.breaker = CircuitBreaker(
            participant.name,
            probes={Dependency.STORE: self._probe_store, Dependency.BROKER: self._probe_broker},
            probe_timeout=PROBE_TIMEOUT_SECONDS,
            max_probe_delay=settings.outage_probe_max_delay_seconds,
        )
        self.relay = OutboxRelay(
            store,
            broker,
            self.exchange,
            participant=participant.name,
            interval=settings.relay_interval_seconds,
            breaker=self.breaker,
        )
        self.pruner = participant_pruner(store, settings, service=participant.name)
        self.redelivery = Redelivery(
            participant.name, broker=broker, topology=self.topology, settings=settings
        )
        events = Events(
            name=participant.name,
            spec=self.spec,
            store=store,
            relay=self.relay,
            broker=broker,
            max_message_bytes=settings.max_message_bytes,
        )
        self.dispatcher = Dispatcher(
            participant.name,
            spec=self.spec,
            store=store,
            settings=settings,
            breaker=self.breaker,
            relay=self.relay,
            redelivery=self.redelivery,
            forward=ForwardStep(
                spec=self.spec,
                store=store,
                events=events,
                step_timeout=settings.step_timeout_seconds,
                undo_functions=participant.undo_functions,
            ),
            compensation=Compensation(
                name=participant.name,
                spec=self.spec,
                store=store,
                events=events,
                step_timeout=settings.step_timeout_seconds,
                undo_functions=participant.undo_functions,
            ),
        )
        # A router of its own, so that SagaMiddleware wraps sagakit's subscribers and
        # nothing else that shares the broker.
        self._router = RabbitRouter(
            middlewares=[
                SagaMiddleware.of(self.redelivery, max_message_bytes=settings.max_message_bytes)
            ]
        )
        for sub in self.subscriptions:
            self._subscribe(sub)
        self._document_emitted_events()
        broker.include_router(self._router)

    @property
    def name(self) -> str:
        """The participant's name."""
        return self.participant.name

    # -- lifecycle ---------------------------------------------------------------------

    async def declare_topology(self) -> None:
        """Declare the dead-letter exchange and queue and the delay queues."""
        dlx = await self.broker.declare_exchange(self.topology.dead_letter_exchange())
        dlq = await self.broker.declare_queue(self.topology.dead_letter_queue())
        await dlq.bind(dlx, routing_key="#")
        retries = await self.broker.declare_exchange(self.topology.retry_exchange())
        for sub in self.subscriptions:
            delay = await self.broker.declare_queue(self.topology.retry_queue(sub.event_type))
            await delay.bind(retries, routing_key=delay.name)
            work = await self.broker.declare_queue(self.topology.work_queue(sub.event_type))
            await work.bind(retries, routing_key=work.name)

    async def start(self, *, declare: bool = True) -> None:
        """Declare what FastStream does not, then start the outbox relay and pruning.

        A connection lost while declaring (a broker restart, a network blip) is waited out
        instead of ending the process: the robust connection comes back, and declaring
        again is harmless.
        """
        if declare:
            await self._declare_topology_patiently()
        self.relay.start()
        self.pruner.start()

    async def _declare_topology_patiently(self) -> None:
        for attempt in range(1, _DECLARE_ATTEMPTS + 1):
            try:
                await self.declare_topology()
                return
            # aiormq: connection errors are ConnectionErrors, a closed channel a RuntimeError.
            except (ConnectionError, RuntimeError) as exc:
                if attempt == _DECLARE_ATTEMPTS:
                    raise
                logger.warning("declaring the topology failed (%r), trying again", exc)
                await asyncio.sleep(_DECLARE_PAUSE_SECONDS)

    async def stop(self) -> None:
        """Hand held deliveries back to their queues; stop pruning and the outbox relay."""
        await self.breaker.stop()
        await self.pruner.stop()
        await self.relay.stop()

    async def _probe_store(self) -> None:
        # Connections opened during the outage may be useless after it (SQLite opens a file
        # it cannot write read-only, for good; a PostgreSQL standby stays one): each probe
        # starts from an empty pool, so the connections after the outage are new ones.
        await self.store.dispose()
        await self.store.probe()

    async def _probe_broker(self) -> None:
        if not await self.broker.ping(timeout=PROBE_TIMEOUT_SECONDS / 2):
            raise ConnectionError("the broker does not answer")

    # -- subscribing -------------------------------------------------------------------

    def _subscribe(self, sub: Subscription) -> None:
        model = self.spec.model_for(sub.event_type)
        self._router.subscriber(
            self.topology.work_queue(sub.event_type),
            self.exchange,
            ack_policy=AckPolicy.MANUAL,
            decoder=_decode_json,
            # Events are never RPC requests: a reply_to set by the sender must not make the
            # service publish to a queue of the sender's choosing.
            no_reply=True,
            title=sub.queue,
            description=f"{self.name}: {sub.kind.value} {sub.name!r} on {sub.event_type}",
        )(consumer(self.dispatcher, sub, model))

    def _document_emitted_events(self) -> None:
        # The outbox relay publishes what a participant emits, not FastStream publishers:
        # these are never published through; they put the emitted events into AsyncAPI.
        for event_type in emitted_events(self.spec, self.name):
            self._router.publisher(
                exchange=self.exchange,
                routing_key=event_type,
                persist=True,
                title=f"{self.name}.emits.{event_type}",
                description=f"{self.name} emits {event_type}",
                schema=Envelope[self.spec.model_for(event_type)],  # type: ignore[misc]
            )


async def _decode_json(message: StreamMessage[Any]) -> Any:
    # The body is JSON whatever content type a foreign client did or did not set.
    return json.loads(message.body)
