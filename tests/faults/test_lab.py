"""sagakit_lab's private PostgreSQL cluster and small volume do what the matrix relies on:
an outage refuses connections and loses nothing committed; a full or read-only volume
really fails SQLite's writes, and both come back; nothing is left behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import pytest
from sagakit_lab import (
    ClusterError,
    PostgresCluster,
    SmallVolume,
    VolumeUnavailable,
    free_port,
    postgres_bin_dir,
    sweep_orphans,
)

from tests.brokers import unavailable

pytestmark = pytest.mark.faults


@pytest.fixture
def volume() -> Iterator[SmallVolume]:
    try:
        with SmallVolume(size_mb=8) as mounted:
            yield mounted
    except VolumeUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    try:
        postgres_bin_dir()
    except ClusterError as exc:
        unavailable(str(exc))
    with PostgresCluster() as started:
        yield started


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


async def test_an_outage_refuses_connections_and_loses_nothing_committed(
    cluster: PostgresCluster,
) -> None:
    cluster.create_database("payment")
    connection = await asyncpg.connect(cluster.dsn("payment"))
    await connection.execute("CREATE TABLE charges (id int PRIMARY KEY)")
    await connection.execute("INSERT INTO charges VALUES (1), (2)")
    await connection.close()
    port = cluster.port

    await cluster.stop_async(mode="immediate")
    assert not cluster.running
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(cluster.dsn("payment"), timeout=5)

    await cluster.start_async()
    assert cluster.port == port
    connection = await asyncpg.connect(cluster.dsn("payment"))
    try:
        assert await connection.fetchval("SELECT count(*) FROM charges") == 2
    finally:
        await connection.close()
    assert cluster.outages == 1
    assert cluster.url("payment") == f"postgresql+asyncpg://postgres@127.0.0.1:{port}/payment"


def test_a_closed_cluster_leaves_no_server_and_no_directory() -> None:
    try:
        postgres_bin_dir()
    except ClusterError as exc:
        unavailable(str(exc))
    cluster = PostgresCluster()
    cluster.start()
    directory, port = cluster.directory, cluster.port
    cluster.close()
    assert not directory.exists()
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"-p {port} " not in running


def test_a_cluster_refuses_a_directory_its_user_cannot_enter(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as root only: the server then runs as another user")
    tmp_path.chmod(0o700)
    with pytest.raises(ClusterError, match="may not enter"):
        PostgresCluster(parent_dir=tmp_path).start()


def test_a_full_volume_fails_sqlite_writes_until_it_is_freed(volume: SmallVolume) -> None:
    database = sqlite3.connect(volume.path / "shipping.db", isolation_level=None)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("CREATE TABLE shipments (payload blob)")
    database.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    ballast = volume.fill()
    assert ballast > 0
    assert volume.free_bytes == 0
    with pytest.raises(sqlite3.OperationalError, match="full"):
        database.execute("INSERT INTO shipments VALUES (randomblob(20000))")

    volume.free()
    assert volume.ballast_bytes == 0
    database.execute("INSERT INTO shipments VALUES (randomblob(20000))")
    assert database.execute("SELECT count(*) FROM shipments").fetchone() == (1,)
    database.close()


def test_a_read_only_volume_fails_writes_of_a_database_held_open(volume: SmallVolume) -> None:
    # As a service holds it: open for writing, which is why a remount is refused.
    database = sqlite3.connect(volume.path / "inventory.db", isolation_level=None)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("CREATE TABLE stock (sku text)")
    database.execute("INSERT INTO stock VALUES ('SKU-APPLE')")

    method = volume.read_only()
    assert method == "immutable"
    with pytest.raises(sqlite3.OperationalError):
        database.execute("INSERT INTO stock VALUES ('SKU-PEAR')")
    with pytest.raises(PermissionError):
        (volume.path / "new-file").write_text("x")
    assert database.execute("SELECT count(*) FROM stock").fetchone() == (1,)  # reads work

    volume.writable()
    database.execute("INSERT INTO stock VALUES ('SKU-PEAR')")
    assert database.execute("SELECT count(*) FROM stock").fetchone() == (2,)
    database.close()


def test_a_volume_nobody_holds_open_is_remounted_read_only(volume: SmallVolume) -> None:
    (volume.path / "inventory.db").write_bytes(b"")
    assert volume.read_only() == "remount"
    with pytest.raises(OSError, match="Read-only"):
        (volume.path / "inventory.db").write_bytes(b"x")
    volume.writable()
    (volume.path / "inventory.db").write_bytes(b"x")


def test_a_closed_volume_is_unmounted_and_gone() -> None:
    try:
        volume = SmallVolume(size_mb=4)
        path = volume.mount()
    except VolumeUnavailable as exc:
        unavailable(str(exc))
    volume.read_only()
    volume.close()
    assert not _mounted(path)
    assert not path.exists()


def test_free_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)


def test_a_volume_whose_owner_died_is_swept_away(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from sagakit_lab import SmallVolume\n"
        "volume = SmallVolume(size_mb=4)\n"
        "print(volume.mount(), flush=True)\n"
        "os._exit(0)  # as if killed: nothing closes it\n"
    )
    try:
        with SmallVolume(size_mb=4):
            pass  # volumes can be mounted here
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
    except (VolumeUnavailable, subprocess.CalledProcessError) as exc:
        unavailable(str(exc))
    orphan = Path(done.stdout.strip())
    assert _mounted(orphan)
    assert orphan in sweep_orphans()
    assert not _mounted(orphan)
    assert not orphan.parent.exists()
