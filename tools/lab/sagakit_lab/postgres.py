"""A PostgreSQL cluster of its own: ``initdb`` into a temporary directory, a free port.

A test that takes the database away from a service must never stop the server a developer
runs, so it starts its own: ``initdb`` as the ``postgres`` user into a temporary directory
(trust authentication), the server on a free port with its socket in that directory, and
``stop(mode="immediate")`` is the outage (what ``pg_ctl -m immediate stop`` does: every
server process quits at once, the next start runs crash recovery). ``start()`` again
brings it back on the same port, with everything committed before the outage.

The server runs as a child of this process rather than daemonised by ``pg_ctl``: the kernel
stops it (``SIGQUIT``, an immediate shutdown) when the thread that started it dies, so not
even a test run killed with ``SIGKILL`` leaves a server behind. ``close()`` (or leaving the
``with`` block, also on an exception or Ctrl-C) stops it and deletes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

from sagakit import SagaError

__all__ = ["ClusterError", "PostgresCluster", "StopMode", "postgres_bin_dir"]

StopMode = Literal["smart", "fast", "immediate"]

# The signal pg_ctl sends the postmaster for each shutdown mode.
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_DEFAULT_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
# Small and quick: a test cluster holds a few databases of a few MB. fsync off is safe for
# an outage made by stopping the server (what it wrote is in the page cache), not for a
# power cut, which no test makes.
_SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "100",
    "shared_buffers": "16MB",
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


class ClusterError(SagaError):
    """The private PostgreSQL cluster could not be set up, started or stopped."""


def postgres_bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` are: ``$SAGAKIT_PG_BIN``, a Debian path, or PATH.

    Raises:
        ClusterError: They are nowhere to be found.
    """
    candidates = [os.environ.get("SAGAKIT_PG_BIN", ""), *_DEFAULT_BIN_DIRS]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    raise ClusterError(
        "initdb not found: install PostgreSQL's server binaries or set SAGAKIT_PG_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """A private PostgreSQL cluster; ``start()`` it, take it away with ``stop()``.

    Args:
        port: The port to listen on (default: a free one, kept across restarts).
        user: The operating-system user the server runs as when this process is root
            (PostgreSQL refuses to run as root); otherwise the server runs as us.
        bin_dir: Where ``initdb`` and ``postgres`` are (default: ``postgres_bin_dir()``).
        settings: Server settings (``-c name=value``) on top of small test defaults.
        parent_dir: Where the temporary data directory goes (default: the system's).

    Example:
        ```python
        with PostgresCluster() as cluster:
            url = cluster.create_database("payment")  # postgresql+asyncpg://…/payment
            cluster.stop(mode="immediate")  # the outage
            cluster.start()  # back, same port, same data
        ```
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "postgres",
        bin_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        parent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.bin_dir = Path(bin_dir) if bin_dir is not None else postgres_bin_dir()
        self.settings = {**_SERVER_SETTINGS, **(settings or {})}
        self._user = user if os.geteuid() == 0 else None
        self._parent_dir = parent_dir
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.outages = 0

    # -- where it is -------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The temporary directory: ``data/``, the socket and ``server.log``."""
        if self._directory is None:
            raise ClusterError("the cluster was never started")
        return self._directory

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL of ``database`` (user ``postgres``, trust authentication)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of ``database`` for asyncpg (what sagakit's store takes)."""
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{database}"

    # -- life cycle --------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Create the cluster on first use, start the server and wait until it answers.

        Call it from a thread that lives as long as the server should (the server stops
        when the thread that started it ends): the main thread or the event loop's.

        Raises:
            ClusterError: ``initdb`` failed, or the server exited or did not answer in time.
        """
        if self.running:
            return
        if self._directory is None:
            self._initdb()
        self._spawn()
        give_up_at = time.monotonic() + timeout
        while not self._answers():
            self._raise_if_exited()
            if time.monotonic() > give_up_at:
                raise ClusterError(f"PostgreSQL did not answer within {timeout:g}s{self._tail()}")
            time.sleep(0.05)

    async def start_async(self, *, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """``start()`` without blocking the event loop while the server comes up."""
        if self.running:
            return
        if self._directory is None:
            await asyncio.to_thread(self._initdb)
        self._spawn()  # on the loop's thread: the server lives as long as the loop's thread
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + timeout
        while not await asyncio.to_thread(self._answers):
            self._raise_if_exited()
            if loop.time() > give_up_at:
                raise ClusterError(f"PostgreSQL did not answer within {timeout:g}s{self._tail()}")
            await asyncio.sleep(0.05)

    def stop(self, *, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``immediate``: the outage; ``fast``: a clean shutdown).

        Returns once every server process has exited. Data and port stay for ``start()``.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        if mode == "immediate":
            self.outages += 1
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(_STOP_SIGNALS[mode])
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its children quit with it on SIGKILL too: they watch the postmaster's pipe.
            process.kill()
            process.wait()
        self._wait_port_closed(timeout)

    async def stop_async(
        self,
        *,
        mode: StopMode = "fast",
        timeout: float = 60.0,  # noqa: ASYNC109
    ) -> None:
        """``stop()`` without blocking the event loop."""
        await asyncio.to_thread(self.stop, mode=mode, timeout=timeout)

    def close(self) -> None:
        """Stop the server at once and delete its directory (idempotent)."""
        try:
            self.stop(mode="immediate", timeout=30)
        finally:
            directory, self._directory = self._directory, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> PostgresCluster:
        try:
            await self.start_async()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- databases ---------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URL (see ``url``)."""
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def create_database_async(self, name: str) -> str:
        """``create_database()`` without blocking the event loop."""
        return await asyncio.to_thread(self.create_database, name)

    # -- internals ---------------------------------------------------------------------

    def _as_user(self) -> dict[str, object]:
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="sagakit-pg-", dir=self._parent_dir))
        try:
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(directory, entry.pw_uid, entry.pw_gid)
            done = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "--pgdata",
                    str(directory / "data"),
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=directory,
                **self._as_user(),  # type: ignore[call-overload]
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if done.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise ClusterError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        self._directory = directory

    def _spawn(self) -> None:
        options = ["-p", str(self.port), "-k", str(self.directory)]
        for name, value in self.settings.items():
            options += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # type: ignore[call-overload]
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_quit_with_parent if _LIBC is not None else None,
                **self._as_user(),
            )

    def _answers(self) -> bool:
        # The server accepts TCP before it accepts sessions: ask it for one.
        done = subprocess.run(
            [
                str(self.bin_dir / "pg_isready"),
                "-q",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def _raise_if_exited(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            raise ClusterError(f"PostgreSQL exited with code {code}{self._tail()}")

    def _wait_port_closed(self, timeout: float) -> None:
        give_up_at = time.monotonic() + timeout
        while time.monotonic() < give_up_at:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((self.host, self.port)) != 0:
                    return
            time.sleep(0.05)

    def _psql(self, statement: str) -> None:
        psql = self.bin_dir / "psql"
        executable = str(psql) if psql.is_file() else (shutil.which("psql") or "psql")
        done = subprocess.run(
            [executable, "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn(), "-c", statement],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise ClusterError(f"{statement!r} failed: {done.stderr.strip()}")

    def _tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- " + str(self.log_path) + " ---\n" + "\n".join(text)


# Loaded here, not in the child: between fork and exec only the prctl call itself runs.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _quit_with_parent() -> None:
    # Runs after the switch to the server's user (a credential change clears the setting),
    # so the kernel sends SIGQUIT, PostgreSQL's immediate shutdown, when we die.
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
