"""Private infrastructure for fault tests and chaos runs.

Everything here starts its own servers on free ports under a temporary directory (a RabbitMQ
node or cluster, a PostgreSQL cluster, a small volume) and stops them after, so that a test can
take a dependency away without touching the broker or database a developer runs.
"""

from .postgres import ClusterError, PostgresCluster, StopMode, postgres_bin_dir
from .rabbit import RabbitCluster, RabbitLabError, RabbitNode, rabbitmq_missing
from .volumes import ReadOnlyMethod, SmallVolume, VolumeError, VolumeUnavailable

__all__ = [
    "ClusterError",
    "PostgresCluster",
    "RabbitCluster",
    "RabbitLabError",
    "RabbitNode",
    "ReadOnlyMethod",
    "SmallVolume",
    "StopMode",
    "VolumeError",
    "VolumeUnavailable",
    "postgres_bin_dir",
    "rabbitmq_missing",
]
