"""shard_of is the partition Kafka's default partitioner picks for the project id."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bridge.sharding import partition_of, shard_of
from tests.kafka_fixtures import create_topic

PROJECTS = ["p-1", "p-2", "0a1b2c3d4e5f", "project with spaces", "ünïcode-项目", ""]


@pytest.mark.parametrize("partitions", [1, 3, 12, 50])
@pytest.mark.parametrize("project_id", PROJECTS)
def test_shard_matches_aiokafka_default_partitioner(project_id, partitions):
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(project_id.encode(), all_partitions, all_partitions)
    assert shard_of(project_id, partitions) == expected


# murmur2 values from Kafka's own UtilsTest.testMurmur2 (Java, signed 32-bit)
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), KAFKA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 12, 31])
def test_partition_of_matches_kafka_java_client(key, java_hash, partitions):
    # Utils.toPositive(murmur2(key)) % partitions, as the Java DefaultPartitioner does
    assert partition_of(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_projects_spread_over_shards():
    shards = {shard_of(f"project-{i}", 12) for i in range(200)}
    assert shards == set(range(12))


def test_zero_partitions_refused():
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("p-1", 0)


@pytest.mark.integration
async def test_shard_is_the_partition_a_real_broker_gets(kafka_bootstrap, topic_name):
    await create_topic(kafka_bootstrap, topic_name, partitions=12)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        for project_id in PROJECTS:
            meta = await producer.send_and_wait(topic_name, b"x", key=project_id.encode())
            assert meta.partition == shard_of(project_id, 12), project_id
