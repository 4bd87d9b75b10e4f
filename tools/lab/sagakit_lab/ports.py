"""Free TCP ports for servers a test starts, that nothing else will take in the meantime.

Asking the kernel for port 0 returns an ephemeral port: the same range it takes the local
ports of outgoing connections from, so that between the probe and the server's own bind a
client connection (to the broker, say) may take it, and asking twice may return the same
one. Ports come from below the ephemeral range instead, and never twice from one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]

_LOWEST = 20_000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on, outside the ephemeral range, not handed out before."""
    highest = _ephemeral_start() - 1
    with _lock:
        for _ in range(200):
            port = random.randint(_LOWEST, highest)
            if port not in _handed_out and _bindable(port, host):
                _handed_out.add(port)
                return port
        # A crowded range: fall back on the kernel's choice.
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((host, 0))
                port = int(probe.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
