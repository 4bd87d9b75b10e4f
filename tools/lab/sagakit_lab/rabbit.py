"""Private RabbitMQ nodes and clusters: free ports, a temporary directory, never the machine's.

A node gets its own name (``<prefix>-<n>@localhost``), AMQP and distribution ports chosen
free, data, logs, configuration and environment file under its directory, and a ``HOME``
whose ``.erlang.cookie`` only its cluster shares. Every ``rabbitmqctl`` call names the node
(``-n``): nothing here can reach the broker a developer runs, whatever ``rabbitmqctl`` would
reach by default. The node runs in a process group of its own, as the current user, from
RabbitMQ's own scripts (Debian's ``/usr/sbin`` wrappers would switch to the ``rabbitmq``
user, whose ``HOME`` holds the machine node's cookie).

Example:
    ```python
    with RabbitCluster(tmp_path, size=3) as cluster:
        url = cluster.url  # amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/
        cluster.nodes[0].kill()  # SIGKILL: the node is gone, as a crash leaves it
    ```
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "RabbitCluster",
    "RabbitLabError",
    "RabbitNode",
    "rabbitmq_missing",
]

_POLL_SECONDS = 0.1
_LOG_TAIL_LINES = 30
# rabbitmqctl opens its own Erlang distribution port in this fixed range (rabbitmq-env's
# default); a node listening there would make every CLI call fail.
_CLI_DIST_PORTS = range(35672, 35683)
_RESERVED_PORTS = {4369, 5671, 5672, 15672, 25672, *_CLI_DIST_PORTS}
_WRAPPER = "rabbitmq-script-wrapper"


class RabbitLabError(RuntimeError):
    """A private node could not be started, stopped or asked something."""


def _scripts() -> Path | None:
    """The directory of RabbitMQ's own ``rabbitmq-server`` and ``rabbitmqctl`` scripts."""
    found = shutil.which("rabbitmq-server")
    if found is None:
        for candidate in ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/opt/rabbitmq/sbin"):
            if (Path(candidate) / "rabbitmq-server").is_file():
                found = str(Path(candidate) / "rabbitmq-server")
                break
        else:
            return None
    resolved = Path(found).resolve()
    if resolved.name == _WRAPPER:
        # Debian's wrapper runs /usr/lib/rabbitmq/bin/<script> as the rabbitmq user.
        resolved = (resolved.parent / "rabbitmq-server").resolve()
    directory = resolved.parent
    if not (directory / "rabbitmqctl").exists():
        return None
    return directory


def rabbitmq_missing() -> str | None:
    """Why no private node can start here (no ``rabbitmq-server``), or None when one can."""
    if _scripts() is None:
        return "rabbitmq-server is not installed (not on the PATH nor in /usr/lib/rabbitmq/bin)"
    return None


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


_handed_out: set[int] = set()


def _free_port() -> int:
    # Below the ephemeral range: a node keeps its ports across restarts, and while it is
    # down, an outgoing connection (a client reconnecting to it) could take a port the
    # kernel hands out from that range as its own local port.
    highest = _ephemeral_start() - 1
    for _ in range(500):
        port = random.randint(20_000, highest)
        if port in _handed_out or port in _RESERVED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RabbitLabError("no free port below the ephemeral range")


def _answers_amqp(port: int) -> bool:
    """True when the node on ``port`` greets an AMQP client (its listener starts last)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return len(sock.recv(8)) > 0
    except OSError:
        return False


class RabbitNode:
    """One private RabbitMQ node, stopped until ``start()``.

    Args:
        directory: Where its data, logs and configuration go (created if missing).
        name: The node's short name; its node name is ``<name>@localhost``.
        home: The ``HOME`` with the ``.erlang.cookie`` (shared by a cluster); its own if unset.
        seed: Another node's node name: on its first start, this node joins that one's cluster.
        port: The AMQP port (free one when unset); the distribution port is always chosen.
        management: Enable the management plugin, its HTTP API on a free port
            (``management_url``); it costs a few seconds of start-up.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str | None = None,
        home: Path | None = None,
        seed: str | None = None,
        port: int | None = None,
        management: bool = False,
    ) -> None:
        scripts = _scripts()
        if scripts is None:
            raise RabbitLabError(rabbitmq_missing() or "rabbitmq-server is not installed")
        self._scripts = scripts
        self.name = name or f"sagakit-lab-{secrets.token_hex(3)}"
        self.nodename = f"{self.name}@localhost"
        self.directory = Path(directory) / self.name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.home = home or self.directory / "home"
        _write_cookie(self.home)
        self.seed = seed
        self.port = port or _free_port()
        self.dist_port = _free_port()
        self.management_port = _free_port() if management else None
        self.log_path = self.directory / "log" / f"{self.nodename}.log"
        self._console = self.directory / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    # -- what clients need -------------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def url_for(self, vhost: str = "/", *, user: str = "guest", password: str = "guest") -> str:
        """An AMQP URL of this node for ``vhost``."""
        from urllib.parse import quote

        path = "" if vhost == "/" else quote(vhost, safe="")
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.address}/{path}"

    @property
    def url(self) -> str:
        """The default virtual host, as ``guest`` (allowed: the node listens on loopback)."""
        return self.url_for()

    @property
    def management_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the management HTTP API, when enabled."""
        if self.management_port is None:
            return None
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def pid(self) -> int | None:
        """The process id of the node's start script while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the node's processes run (it may not answer yet)."""
        return self.pid is not None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        """Start the node and wait until it greets AMQP clients.

        Raises:
            RabbitLabError: It exited, or did not answer within ``timeout``; with its log.
        """
        if self.running:
            raise RabbitLabError(f"{self.nodename} is already running")
        self.spawn()
        self.wait_started(timeout=timeout)

    def spawn(self) -> None:
        """Start the node's processes without waiting (see ``wait_started``)."""
        with self._console.open("ab") as console:
            self._process = subprocess.Popen(
                [str(self._scripts / "rabbitmq-server")],
                env=self._env(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                # A group of its own: kill() reaches the Erlang VM and its helpers.
                start_new_session=True,
            )

    def wait_started(self, *, timeout: float = 90.0) -> None:
        """Wait until the spawned node greets AMQP clients (and serves its HTTP API)."""
        give_up_at = time.monotonic() + timeout
        while not self._answers():
            if self._process is None or self._process.poll() is not None:
                raise RabbitLabError(f"{self.nodename} exited while starting\n{self.log_tail()}")
            if time.monotonic() >= give_up_at:
                raise RabbitLabError(
                    f"{self.nodename} did not answer on {self.address} within {timeout:g}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_SECONDS)

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the node cleanly (SIGTERM to its own process); SIGKILL after ``timeout``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        self._kill_group(process)

    def kill(self) -> None:
        """SIGKILL the node's processes: gone at once, as after a crash or a power cut."""
        process = self._process
        if process is not None:
            self._kill_group(process)

    def restart(self, *, down: float = 0.0, timeout: float = 90.0) -> None:
        """Stop the node cleanly, stay down ``down`` seconds, start it again."""
        self.stop()
        time.sleep(down)
        self.start(timeout=timeout)

    def _answers(self) -> bool:
        if not _answers_amqp(self.port):
            return False
        if self.management_port is None:
            return True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.management_port), timeout=1.0).close()
            return True
        return False

    def _kill_group(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    # -- asking it things --------------------------------------------------------------

    def ctl(self, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
        """Run ``rabbitmqctl -n <this node> -q <args>``; its standard output.

        Raises:
            RabbitLabError: The command failed (with its output).
        """
        command = [str(self._scripts / "rabbitmqctl"), "-n", self.nodename, "-q", *args]
        result = subprocess.run(
            command,
            env=self._env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RabbitLabError(
                f"rabbitmqctl -n {self.nodename} {' '.join(args)} failed "
                f"({result.returncode}): {(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def add_vhost(self, vhost: str, *, user: str = "guest") -> str:
        """Create ``vhost``, give ``user`` every permission on it; its URL as ``guest``."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        return self.url_for(vhost)

    def queues(self, vhost: str = "/", *columns: str) -> list[dict[str, Any]]:
        """``rabbitmqctl list_queues`` of ``vhost``, one dict per queue (default: name, type).

        Columns are ``list_queues``'s: ``members``, ``online`` and ``leader`` give a quorum
        queue's replicas.
        """
        wanted = list(columns or ("name", "type"))
        output = self.ctl("list_queues", "-p", vhost, *wanted, "--formatter", "json")
        return list(json.loads(output))

    def connections(self) -> list[dict[str, Any]]:
        """The client connections this node holds (user, vhost, peer port)."""
        output = self.ctl(
            "list_connections", "user", "vhost", "peer_port", "name", "--formatter", "json"
        )
        return list(json.loads(output))

    def cluster_nodes(self) -> list[str]:
        """The running nodes of this node's cluster, as this node sees them."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return [str(node) for node in status.get("running_nodes", [])]

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the node's log (or of its console, before the log exists)."""
        for path in (self.log_path, self._console):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    return f"--- last lines of {path} ---\n" + "\n".join(tail)
        return f"(no log in {self.directory})"

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [
            "# a private node of sagakit's tests; listeners come from the environment",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.seed is not None:
            # Peer discovery runs on a blank node only: the first start joins the seed.
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.seed}",
            ]
        plugins = "[]."
        if self.management_port is not None:
            lines += [
                "management.tcp.ip = 127.0.0.1",
                f"management.tcp.port = {self.management_port}",
            ]
            plugins = "[rabbitmq_management]."
        (self.directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.directory / "enabled_plugins").write_text(plugins + "\n")
        # Read instead of /etc/rabbitmq/rabbitmq-env.conf, which names the machine's node.
        (self.directory / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        # Nothing of the caller's RabbitMQ or Erlang settings may point us elsewhere.
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) or key == "ERL_EPMD_PORT"
        }
        directory = self.directory
        return {
            **inherited,
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "data"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }


def _write_cookie(home: Path) -> None:
    cookie = home / ".erlang.cookie"
    if cookie.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    cookie.write_text(secrets.token_hex(20).upper())
    cookie.chmod(0o400)


class RabbitCluster:
    """``size`` private nodes in one cluster, sharing one cookie.

    The first node starts alone; the others then start together and join it (classic
    peer discovery), so the cluster stands in about the time of two node starts.

    Args:
        directory: Where the nodes' directories go.
        size: How many nodes.
        prefix: The nodes' short names are ``<prefix>-1`` … ``<prefix>-<size>``.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, size: int = 3, prefix: str | None = None
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        prefix = prefix or f"sagakit-lab-{secrets.token_hex(3)}"
        home = Path(directory) / f"{prefix}-home"
        _write_cookie(home)
        first = RabbitNode(directory, name=f"{prefix}-1", home=home)
        self.nodes: list[RabbitNode] = [first]
        for number in range(2, size + 1):
            self.nodes.append(
                RabbitNode(directory, name=f"{prefix}-{number}", home=home, seed=first.nodename)
            )

    @property
    def url(self) -> str:
        """Every node in one URL, in order: ``amqp://guest:guest@host1:p1,host2:p2/``."""
        return self.url_for()

    def url_for(self, vhost: str = "/", *, nodes: Sequence[RabbitNode] | None = None) -> str:
        """The comma form of the URL of ``nodes`` (default: all, in order) for ``vhost``."""
        chosen = list(nodes or self.nodes)
        first = chosen[0].url_for(vhost)
        hosts = ",".join(node.address for node in chosen)
        return first.replace(chosen[0].address, hosts, 1)

    def start(self, *, timeout: float = 120.0) -> None:
        """Start every node; returns once each answers and all are one cluster."""
        try:
            self.nodes[0].start(timeout=timeout)
            for node in self.nodes[1:]:
                node.spawn()
            for node in self.nodes[1:]:
                node.wait_started(timeout=timeout)
            self.wait_clustered(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def wait_clustered(self, *, timeout: float = 60.0) -> None:
        """Wait until the first running node sees every running node in its cluster."""
        running = [node for node in self.nodes if node.running]
        wanted = {node.nodename for node in running}
        give_up_at = time.monotonic() + timeout
        while True:
            seen = set(running[0].cluster_nodes())
            if seen >= wanted:
                return
            if time.monotonic() >= give_up_at:
                raise RabbitLabError(f"cluster incomplete: {sorted(seen)}, want {sorted(wanted)}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every node (all at once: the last ones need no quorum to shut down)."""
        for node in self.nodes:
            process = node._process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __iter__(self) -> Iterator[RabbitNode]:
        return iter(self.nodes)
