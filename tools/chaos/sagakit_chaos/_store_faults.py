"""The participants' stores, placed where a fault can reach them, and the hands that do it.

Each participant's database goes where its layout says:

- ``sqlite``: a SQLite file in the work directory (no store fault reaches it);
- ``volume``: a SQLite file on a small loop-mounted volume of its own, which can be filled
  (``disk_full``) or made read-only (``read_only``) for a while;
- ``cluster``: a database in a private PostgreSQL cluster of its own, which can be stopped
  with ``-m immediate`` and started again (``store_outage``);
- ``shared``: a fresh database on a PostgreSQL server given by URL (no fault reaches it).

Nothing here touches the machine's own PostgreSQL server beyond creating and dropping the
databases of a ``shared`` layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, cast

from sagakit_lab import PostgresCluster, SmallVolume

from ._faults import STORE_FAULTS, Fault, FaultKind, Injector

logger = logging.getLogger("chaos.stores")

Placement = Literal["sqlite", "volume", "cluster", "shared"]
StoreFault = Literal["store_outage", "disk_full", "read_only"]

_FAULTS_BY_PLACEMENT: dict[Placement, frozenset[StoreFault]] = {
    "sqlite": frozenset(),
    "volume": frozenset({"disk_full", "read_only"}),
    "cluster": frozenset({"store_outage"}),
    "shared": frozenset(),
}


class StoreFaults:
    """Creates each participant's database where ``layout`` says; faults on command.

    Use it as an async context manager: on the way in, volumes are mounted, clusters
    started and databases created (``databases`` has their URLs); on the way out,
    everything is undone, also after an error.

    Args:
        layout: Participant name to placement.
        workdir: Where plain SQLite files go.
        postgres_url: The admin URL of the server for ``shared`` placements.
        volume_mb: The size of each small volume.
    """

    def __init__(
        self,
        layout: Mapping[str, Placement],
        *,
        workdir: Path,
        postgres_url: str | None = None,
        volume_mb: int = 32,
    ) -> None:
        self.layout = dict(layout)
        self.workdir = workdir
        self.postgres_url = postgres_url
        self.volume_mb = volume_mb
        self.databases: dict[str, str] = {}
        self.volumes: dict[str, SmallVolume] = {}
        self.clusters: dict[str, PostgresCluster] = {}
        self._shared: list[str] = []
        self._down: set[tuple[str, StoreFault]] = set()

    def faults(self, participant: str | None = None) -> frozenset[str]:
        """The store faults that can reach ``participant`` (default: any participant)."""
        names = [participant] if participant is not None else list(self.layout)
        return frozenset().union(*(_FAULTS_BY_PLACEMENT[self.layout[n]] for n in names))

    def targets(self, fault: str) -> list[str]:
        """The participants ``fault`` can reach."""
        return [name for name in self.layout if fault in self.faults(name)]

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> StoreFaults:
        try:
            for name, placement in self.layout.items():
                self.databases[name] = await self._place(name, placement)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Undo every fault, stop the clusters, unmount the volumes, drop shared databases."""
        for cluster in self.clusters.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.close)
        for volume in self.volumes.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(volume.close)
        if self._shared and self.postgres_url is not None:
            import asyncpg  # type: ignore[import-untyped]

            with contextlib.suppress(Exception):
                admin = await asyncpg.connect(self.postgres_url, timeout=10)
                try:
                    for name in self._shared:
                        with contextlib.suppress(Exception):
                            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await admin.close()
        self.clusters.clear()
        self.volumes.clear()
        self._shared.clear()

    async def _place(self, name: str, placement: Placement) -> str:
        if placement == "sqlite":
            return f"sqlite+aiosqlite:///{self.workdir}/{name}.db"
        if placement == "volume":
            volume = SmallVolume(size_mb=self.volume_mb, parent_dir=self.workdir)
            self.volumes[name] = volume
            path = await asyncio.to_thread(volume.mount)
            return f"sqlite+aiosqlite:///{path}/{name}.db"
        if placement == "cluster":
            # In the system's temporary directory: the server's user may not enter ours.
            cluster = PostgresCluster()
            self.clusters[name] = cluster
            await cluster.start_async()
            return await cluster.create_database_async(name)
        if self.postgres_url is None:
            raise ValueError(f"{name}: a shared placement needs postgres_url")
        import asyncpg

        database = f"sagakit_chaos_{name}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(self.postgres_url, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        self._shared.append(database)
        base = self.postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{database}"

    # -- faults ------------------------------------------------------------------------

    async def begin(self, fault: StoreFault, participant: str) -> str:
        """Take ``participant``'s store away as ``fault`` says; what was done, in words."""
        if fault not in self.faults(participant):
            raise ValueError(f"{fault} cannot reach {participant} ({self.layout[participant]})")
        self._down.add((participant, fault))
        if fault == "store_outage":
            await self.clusters[participant].stop_async(mode="immediate")
            return f"{participant}'s PostgreSQL stopped (immediate)"
        volume = self.volumes[participant]
        if fault == "disk_full":
            # A WAL that already has room takes writes on a full disk for a while; emptied,
            # the next commit needs new space, and fails.
            await asyncio.to_thread(_truncate_wal, volume.path / f"{participant}.db")
            filled = await asyncio.to_thread(volume.fill)
            return f"{participant}'s volume full ({filled // 1024} KiB of ballast)"
        method = await asyncio.to_thread(volume.read_only)
        return f"{participant}'s volume read-only ({method})"

    async def end(self, fault: StoreFault, participant: str) -> None:
        """Give the store back."""
        self._down.discard((participant, fault))
        if fault == "store_outage":
            await self.clusters[participant].start_async()
        elif fault == "disk_full":
            await asyncio.to_thread(self.volumes[participant].free)
        else:
            await asyncio.to_thread(self.volumes[participant].writable)

    async def restore(self) -> None:
        """End every fault still in force."""
        for participant, fault in list(self._down):
            await self.end(fault, participant)


def placements(store: str, participants: Sequence[str]) -> dict[str, Placement]:
    """The layout of a chaos run: every participant on a faultable store of ``store``'s kind."""
    placement: Placement = "volume" if store == "sqlite" else "cluster"
    return dict.fromkeys(participants, placement)


def _truncate_wal(database: Path) -> None:
    if not database.exists():
        return
    connection = sqlite3.connect(database, timeout=10)
    try:
        for _ in range(20):
            # (busy, frames in the log, frames checkpointed): (0, 0, 0) once truncated.
            busy, log, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy and log == 0:
                return
    except sqlite3.Error as exc:
        logger.warning("could not truncate the WAL of %s: %s", database, exc)
    finally:
        connection.close()


class StoreFaultHands:
    """Carries out the store faults ``stores`` can reach, for ``injector``.

    A store fault lasts in the background: sagas keep starting, and faults that need no
    restart (duplicates, garbage, cuts) keep coming, while it lasts. It holds the
    injector's lock meanwhile, so that no service is started into it: a kill or a crashed
    service waits for the store to come back.
    """

    def __init__(self, stores: StoreFaults, injector: Injector) -> None:
        self.stores = stores
        self.injector = injector
        self._running: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[FaultKind, Callable[[Fault], Awaitable[None]]]:
        """What to hand the injector."""
        reachable = [kind for kind, name in STORE_FAULTS.items() if self.stores.targets(name)]
        return {kind: functools.partial(self._begin, kind) for kind in reachable}

    async def wait(self) -> None:
        """Until every store fault has run its course (raising what one raised)."""
        while self._running:
            await asyncio.gather(*self._running)

    async def stop(self) -> None:
        """Cut every store fault short (each gives its store back as it ends)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _begin(self, kind: FaultKind, fault: Fault) -> None:
        began = asyncio.Event()
        task = asyncio.create_task(self._hold(kind, fault, began), name=f"chaos-{kind.value}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Once the store is down: the next fault is not carried out before this one.
        waiting = asyncio.create_task(began.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()

    async def _hold(self, kind: FaultKind, fault: Fault, began: asyncio.Event) -> None:
        name = cast(StoreFault, STORE_FAULTS[kind])  # one of StoreFault's names
        async with self.injector.lock:
            done = await self.stores.begin(name, fault.target)
            self.injector.note(kind, f"{done} for {fault.seconds:.1f}s")
            started = self.injector.started
            began.set()
            try:
                await asyncio.sleep(fault.seconds)
            finally:
                await self.stores.end(name, fault.target)
                meanwhile = self.injector.started - started
                self.injector.remark(f"{kind.value} over", f"{meanwhile} sagas started meanwhile")
