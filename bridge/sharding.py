"""Which shard a project belongs to: the state-topic partition Kafka's default partitioner picks.

The scale-out membership (consumer group on the state topic) joins this module later.
"""

from __future__ import annotations

import logging

from aiokafka.partitioner import murmur2

__all__ = ["partition_of", "shard_of"]

log = logging.getLogger(__name__)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner chooses for ``key``: positive murmur2, modulo."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


def shard_of(project_id: str, partitions: int) -> int:
    """The shard (state partition) of ``project_id``: the partition of the key ``project_id``."""
    return partition_of(project_id.encode(), partitions)
