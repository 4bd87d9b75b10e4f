"""Private infrastructure for fault tests and chaos runs.

Everything here starts its own servers on free ports under a temporary directory (a RabbitMQ
node or cluster, a PostgreSQL cluster, a small volume, a TCP proxy that slows or cuts
connections) and stops them after, so that a test can take a dependency away without touching
the broker or database a developer runs.
"""

from .ports import free_port
from .postgres import ClusterError, PostgresCluster, StopMode, postgres_bin_dir
from .proxy import TcpProxy
from .rabbit import RabbitCluster, RabbitLabError, RabbitNode, rabbitmq_missing
from .volumes import ReadOnlyMethod, SmallVolume, VolumeError, VolumeUnavailable, sweep_orphans

__all__ = [
    "ClusterError",
    "PostgresCluster",
    "RabbitCluster",
    "RabbitLabError",
    "RabbitNode",
    "ReadOnlyMethod",
    "SmallVolume",
    "StopMode",
    "TcpProxy",
    "VolumeError",
    "VolumeUnavailable",
    "free_port",
    "postgres_bin_dir",
    "rabbitmq_missing",
    "sweep_orphans",
]
