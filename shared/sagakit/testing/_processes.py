"""Running participants as separate OS processes, and knowing when they consume.

A service counts as ready when every queue its participant consumes from exists and has
more consumers than before the service was started: that is the moment an event published
to the flow will be handled, which no log line or open port tells as reliably.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGKILL, SIGTERM, Signals
from types import TracebackType
from typing import NamedTuple

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from sagakit._exceptions import BrokerUnavailable, SagaError
from sagakit._exceptions import ServiceStartError as ServiceStartError
from sagakit.broker._topology import queue_name
from sagakit.broker._urls import redacted
from sagakit.client._client import connect
from sagakit.spec._spec import SagaSpec

logger = logging.getLogger("sagakit.processes")

_POLL_SECONDS = 0.1
_LOG_TAIL_LINES = 25
# How long to wait, after a process died, for the broker to drop its consumers before the
# next instance's readiness is measured against them.
_SETTLE_SECONDS = 5.0


class ServiceApp(NamedTuple):
    """What to run for one service: its participant in the spec, and its app factory.

    ``app`` is ``module:function``, a function that builds the FastStream app (it reads the
    service's settings then, not when the module is imported); it runs as
    ``faststream run module:function --factory``.
    """

    participant: str
    app: str


def consumed_queues(spec: SagaSpec, participant: str) -> tuple[str, ...]:
    """Every queue ``participant`` consumes from: step triggers, compensations, reactions."""
    event_types: dict[str, None] = {}
    for step in spec.steps:
        if step.participant == participant:
            event_types[step.trigger] = None
            event_types.update(dict.fromkeys(step.compensate_on))
    for reaction in spec.reactions:
        if reaction.participant == participant:
            event_types[reaction.trigger] = None
    if not event_types:
        raise SagaError(f"{participant!r} consumes nothing in {spec.saga_type}")
    return tuple(queue_name(participant, event_type) for event_type in event_types)


class QueueProbe:
    """Reads consumer counts of queues through passive declarations.

    A passive declaration of a missing queue closes the channel; the probe then opens a
    fresh one and reports the queue as missing (``None``). The connection is a plain one,
    reopened on the next call after it is lost: a robust one would answer repeated passive
    declarations from its cache and reopen every channel the broker closed.
    """

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def open(self) -> None:
        """Connect, unless connected; raises BrokerUnavailable when no broker answers."""
        # aio-pika sets is_closed only on our own close(); a connection the broker dropped
        # (a restart) shows as no longer connected.
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            self._channel = None
            self._connection = await connect(
                self.url, connect_timeout=self.connect_timeout, robust=False
            )

    async def close(self) -> None:
        """Close the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def consumers(self, queue: str) -> int | None:
        """The number of consumers of ``queue``, or None when it does not exist."""
        await self.open()
        assert self._connection is not None
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
        try:
            declared = await self._channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._channel = None
            return None
        except BaseException:
            self._channel = None
            raise
        result = declared.declaration_result
        return int(result.consumer_count or 0)

    async def counts(self, queues: tuple[str, ...]) -> dict[str, int]:
        """Consumer counts of ``queues``; a missing queue counts 0."""
        return {queue: (await self.consumers(queue)) or 0 for queue in queues}


@dataclass
class _Running:
    name: str
    target: ServiceApp
    queues: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None
    baseline: dict[str, int] = field(default_factory=dict)
    ready_counts: dict[str, int] = field(default_factory=dict)


class ServiceProcesses:
    """Runs services as ``python -m faststream run <module:factory> --factory`` processes.

    Each child inherits the environment plus ``RABBITMQ_URL`` (``url``), ``env`` and its own
    entry of ``service_env``; its stdout and stderr go to ``<log_dir>/<service>.log``. Use it
    as an async context manager, or call ``stop()`` in a ``finally``: children are stopped
    either way, and on Linux they also get SIGTERM if this process dies without cleaning up.

    Children are tied to the thread that starts them (Linux ``PR_SET_PDEATHSIG``): start
    them from a thread that lives as long as they should, such as the event loop's.

    Args:
        services: Service name to (participant name, ``module:factory``), see ServiceApp.
        spec: The flow, to know which queues each participant consumes from.
        url: The broker the services use, and where readiness is checked.
        log_dir: Directory for the log files (created if missing).
        env: Variables for every child.
        service_env: Variables for one child, by service name.
        grace: Seconds between SIGTERM and SIGKILL when stopping.

    Example:
        ```python
        services = {"inventory": ServiceApp("inventory", "inventory_service.main:create_app")}
        async with ServiceProcesses(services, spec=ORDER_SAGA, url=url, log_dir=tmp) as procs:
            await procs.start(timeout=60)
            procs.kill("inventory")
            await procs.restart("inventory")
        ```
    """

    def __init__(
        self,
        services: Mapping[str, tuple[str, str]],
        *,
        spec: SagaSpec,
        url: str,
        log_dir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        service_env: Mapping[str, Mapping[str, str]] | None = None,
        grace: float = 10.0,
    ) -> None:
        self.spec = spec
        self.url = url
        self.log_dir = Path(log_dir)
        self.env = dict(env or {})
        self.service_env = {name: dict(values) for name, values in (service_env or {}).items()}
        self.grace = grace
        self._services: dict[str, _Running] = {}
        for name, given in services.items():
            target = ServiceApp(*given)
            queues = consumed_queues(spec, target.participant)
            self._services[name] = _Running(name=name, target=target, queues=queues)
        unknown = set(self.service_env) - set(self._services)
        if unknown:
            raise SagaError(f"service_env names unknown services: {sorted(unknown)}")
        self._probe = QueueProbe(url)

    @property
    def names(self) -> tuple[str, ...]:
        """The service names, in the order given."""
        return tuple(self._services)

    def log_path(self, name: str) -> Path:
        """Where the output of service ``name`` goes."""
        return self.log_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The process id of service ``name`` while it runs."""
        process = self._service(name).process
        return process.pid if process is not None and process.poll() is None else None

    def alive(self, name: str) -> bool:
        """True while the process of service ``name`` runs."""
        return self.pid(name) is not None

    async def __aenter__(self) -> ServiceProcesses:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- starting ----------------------------------------------------------------------

    async def start(self, *names: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Start ``names`` (default: every service) and wait until each one consumes.

        Raises:
            BrokerUnavailable: No broker answers at ``url`` (checked before anything starts).
            ServiceStartError: A service exited or was not consuming within ``timeout``.
        """
        chosen = [self._service(name) for name in (names or self.names)]
        running = [service.name for service in chosen if self.alive(service.name)]
        if running:
            raise SagaError(f"already running: {', '.join(running)}")
        await self._probe.open()
        give_up_at = asyncio.get_running_loop().time() + timeout
        try:
            await self._measure_baselines(chosen, give_up_at)
            for service in chosen:
                self._spawn(service)
            await self._wait_ready(chosen, give_up_at, timeout)
        except BaseException:
            await self.stop(*(service.name for service in chosen))
            raise

    async def restart(self, name: str, *, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Stop service ``name`` if it runs, start it again and wait until it consumes."""
        service = self._service(name)
        await self._terminate(service)
        await self._settle(service)
        await self.start(name, timeout=timeout)

    def kill(self, name: str, *, signal: Signals = SIGKILL) -> None:
        """Send ``signal`` to service ``name`` (and any process it started); no wait."""
        process = self._service(name).process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal)

    async def wait_exit(self, name: str, *, timeout: float) -> int | None:  # noqa: ASYNC109
        """Wait until service ``name`` has exited; its exit code (None if it still runs)."""
        process = self._service(name).process
        if process is None:
            return None
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout
        while process.poll() is None and loop.time() < give_up_at:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)
        return process.poll()

    async def stop(self, *names: str) -> None:
        """Stop ``names`` (default: all): SIGTERM, then SIGKILL after ``grace`` seconds."""
        chosen = [self._service(name) for name in (names or self.names)]
        try:
            await asyncio.gather(*(self._terminate(service) for service in chosen))
        finally:
            # Even when cancelled mid-way, nothing may outlive us.
            for service in chosen:
                self._reap(service)
            if not names:
                await self._probe.close()

    # -- internals ---------------------------------------------------------------------

    def _service(self, name: str) -> _Running:
        try:
            return self._services[name]
        except KeyError:
            raise SagaError(f"unknown service {name!r}; known: {list(self._services)}") from None

    def _child_env(self, service: _Running) -> dict[str, str]:
        # RABBITMQ_URL names the broker; a shared list or file inherited from our own
        # environment would contradict it (and the settings refuse two of them).
        inherited = {
            key: value
            for key, value in os.environ.items()
            if key not in ("RABBITMQ_URLS", "RABBITMQ_URL_FILE")
        }
        return {
            **inherited,
            "RABBITMQ_URL": self.url,
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **self.service_env.get(service.name, {}),
        }

    def _spawn(self, service: _Running) -> None:
        self._reap(service)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(service.name).open("ab") as log:
            # The child writes through its own copy of the descriptor.
            service.process = subprocess.Popen(
                [sys.executable, "-m", "faststream", "run", service.target.app, "--factory"],
                env=self._child_env(service),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A group of its own: signals reach whatever the service starts, and a
                # Ctrl-C in our terminal reaches only us, so we stop the services in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if _LIBC is not None else None,
            )
        logger.info("started %s (pid %d): %s", service.name, service.process.pid, service.target)

    async def _terminate(self, service: _Running) -> None:
        process = service.process
        if process is None or process.poll() is not None:
            return
        self.kill(service.name, signal=SIGTERM)
        if await self.wait_exit(service.name, timeout=self.grace) is None:
            logger.warning("%s ignored SIGTERM for %.0fs: killing it", service.name, self.grace)
            self.kill(service.name, signal=SIGKILL)
            await self.wait_exit(service.name, timeout=self.grace)

    def _reap(self, service: _Running) -> None:
        process = service.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, SIGKILL)
            process.wait()

    async def _measure_baselines(self, services: list[_Running], give_up_at: float) -> None:
        loop = asyncio.get_running_loop()
        for service in services:
            while (counts := await self._poll(service)) is None:
                if loop.time() >= give_up_at:
                    raise ServiceStartError(f"the broker at {redacted(self.url)} stopped answering")
                await asyncio.sleep(_POLL_SECONDS)
            service.baseline = counts

    async def _wait_ready(
        self,
        services: list[_Running],
        give_up_at: float,
        budget: float,
    ) -> None:
        # Several services may consume the same queue (two instances of a participant).
        expected: dict[str, int] = {}
        for service in services:
            for queue in service.queues:
                expected[queue] = expected.get(queue, service.baseline[queue]) + 1
        loop = asyncio.get_running_loop()
        waiting = list(services)
        while waiting:
            for service in list(waiting):
                if service.process is None or service.process.poll() is not None:
                    raise ServiceStartError(self._describe_exit(service))
                counts = await self._poll(service)
                if counts is not None and all(
                    counts[queue] >= expected[queue] for queue in service.queues
                ):
                    service.ready_counts = counts
                    waiting.remove(service)
                    logger.info("%s consumes from %d queue(s)", service.name, len(counts))
            if waiting and loop.time() >= give_up_at:
                names = ", ".join(service.name for service in waiting)
                raise ServiceStartError(
                    f"not consuming after {budget:g}s: {names}\n{self._log_tail(waiting[0])}"
                )
            if waiting:
                await asyncio.sleep(_POLL_SECONDS)

    async def _poll(self, service: _Running) -> dict[str, int] | None:
        # A broker that blinks while we wait (chaos tests restart it) is not a reason to
        # give up before the timeout: this round counts as "not yet".
        try:
            return await self._probe.counts(service.queues)
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            BrokerUnavailable,
            ConnectionError,
            TimeoutError,
            # aiormq's "<Connection …> closed" while the robust connection reconnects.
            RuntimeError,
        ) as exc:
            logger.debug("consumer count of %s unavailable: %r", service.name, exc)
            return None

    async def _settle(self, service: _Running) -> None:
        """Wait until the broker has dropped the consumers of a process that is gone."""
        if not service.ready_counts:
            return
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + _SETTLE_SECONDS
        while loop.time() < give_up_at:
            counts = await self._poll(service)
            if counts is not None and all(
                counts[q] < service.ready_counts[q] for q in service.queues
            ):
                break
            await asyncio.sleep(_POLL_SECONDS)
        service.ready_counts = {}

    def _describe_exit(self, service: _Running) -> str:
        code = service.process.poll() if service.process is not None else None
        return f"service {service.name!r} exited with code {code}\n{self._log_tail(service)}"

    def _log_tail(self, service: _Running) -> str:
        path = self.log_path(service.name)
        try:
            lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return f"(no log at {path})"
        return f"--- last lines of {path} ---\n" + "\n".join(lines)


# Loaded here, not in the child: between fork and exec only the prctl call itself runs.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Ask the kernel to SIGTERM the child when its parent dies, so that not even a parent
    # killed with SIGKILL leaves orphans behind.
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, SIGTERM)
