"""The broker gives the bridge what DESIGN.md relies on, checked with aiokafka on real Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced

from tests.kafka_fixtures import create_topic, eventually

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None]


async def read_all(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a one-partition ``topic`` from offset 0 up to its current end."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False
    )
    async with consumer:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        # read_committed stops at the last stable offset, which equals the end once no
        # transaction is open
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30.0):
            while await consumer.position(tp) < end:
                batches = await consumer.getmany(tp, timeout_ms=500)
                records += batches.get(tp, [])
    return records


def values(records: list[ConsumerRecord[bytes, bytes]]) -> list[bytes | None]:
    return [r.value for r in records]


async def test_records_keep_key_value_and_headers_in_order(kafka_bootstrap, topic_name):
    await create_topic(kafka_bootstrap, topic_name)
    sent = [
        (b"project/1", b'{"status":"running"}', [("ce_type", b"dli.job.created")]),
        (b"project/2", b"", [("schema_version", b"1"), ("empty", b"")]),
        (None, b"no key", []),
        (b"project/1", b'{"status":"failed"}', [("ce_type", b"dli.job.status_changed")]),
    ]
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        for key, value, headers in sent:
            await producer.send_and_wait(topic_name, value, key=key, headers=headers)

    received = await read_all(kafka_bootstrap, topic_name)

    assert [(r.key, r.value, list(r.headers)) for r in received] == sent


async def test_same_key_lands_on_same_partition(kafka_bootstrap, topic_name):
    """Per-job ordering rests on the default partitioner sending one key to one partition."""
    await create_topic(kafka_bootstrap, topic_name, partitions=3)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        sent = [
            await producer.send_and_wait(topic_name, b"%d" % i, key=b"project/%d" % (i % 5))
            for i in range(20)
        ]

    by_key: dict[int, set[int]] = {}
    for i, meta in enumerate(sent):
        by_key.setdefault(i % 5, set()).add(meta.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())
    assert {meta.partition for meta in sent} != {sent[0].partition}  # keys did spread


async def test_read_committed_sees_committed_transaction_but_not_aborted(
    kafka_bootstrap, topic_name
):
    await create_topic(kafka_bootstrap, topic_name)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"txn-{uuid.uuid4().hex}"
    )
    async with producer:
        await producer.begin_transaction()
        await producer.send_and_wait(topic_name, b"aborted-1")
        await producer.send_and_wait(topic_name, b"aborted-2")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic_name, b"committed-1")
            await producer.send_and_wait(topic_name, b"committed-2")

    committed = await read_all(kafka_bootstrap, topic_name, isolation_level="read_committed")
    uncommitted = await read_all(kafka_bootstrap, topic_name, isolation_level="read_uncommitted")

    assert values(committed) == [b"committed-1", b"committed-2"]
    # the aborted records did reach the log: only the isolation level hides them
    assert values(uncommitted) == [b"aborted-1", b"aborted-2", b"committed-1", b"committed-2"]


async def test_second_producer_with_same_transactional_id_fences_first(kafka_bootstrap, topic_name):
    await create_topic(kafka_bootstrap, topic_name)
    transactional_id = f"txn-{uuid.uuid4().hex}"
    zombie = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id)
    successor = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id
    )
    async with zombie:
        await zombie.begin_transaction()
        await zombie.send_and_wait(topic_name, b"from the zombie")
        async with successor:  # InitProducerId bumps the epoch and aborts the open transaction
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
            async with successor.transaction():
                await successor.send_and_wait(topic_name, b"from the successor")

    committed = await read_all(kafka_bootstrap, topic_name, isolation_level="read_committed")
    assert values(committed) == [b"from the successor"]


async def assignment_of(consumer: AIOKafkaConsumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


@pytest.fixture
async def group_consumers(
    kafka_bootstrap, topic_name, group_name
) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaConsumer]]:
    """Two members of one group on a two-partition topic, created but not started."""
    await create_topic(kafka_bootstrap, topic_name, partitions=2)
    consumers = tuple(
        AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=kafka_bootstrap,
            group_id=group_name,
            session_timeout_ms=6000,
            heartbeat_interval_ms=200,  # a rebalance is noticed at the next heartbeat
            enable_auto_commit=False,
        )
        for _ in range(2)
    )
    yield consumers[0], consumers[1]
    for consumer in consumers:
        await consumer.stop()


async def test_group_members_split_partitions_and_survivor_takes_over(group_consumers):
    first, second = group_consumers
    await first.start()
    await eventually(lambda: _has(first, {0, 1}), what="first member owns both partitions")

    await second.start()
    await eventually(lambda: _split(first, second), what="the two members own one partition each")

    await second.stop()  # LeaveGroup: the coordinator rebalances at once
    await eventually(lambda: _has(first, {0, 1}), what="the survivor owns both partitions")


async def _has(consumer: AIOKafkaConsumer, partitions: set[int]) -> bool:
    return await assignment_of(consumer) == partitions


async def _split(first: AIOKafkaConsumer, second: AIOKafkaConsumer) -> bool:
    mine, theirs = await assignment_of(first), await assignment_of(second)
    return len(mine) == len(theirs) == 1 and mine | theirs == {0, 1}


# Small enough that the cleaner runs within seconds: every append after segment.ms rolls the
# active segment (the cleaner never touches that one), and tombstones may go 100 ms after
# the pass that first cleaned them.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100",
    "min.compaction.lag.ms": "0",
}


async def test_compacted_topic_keeps_latest_value_per_key_and_drops_tombstones(
    kafka_bootstrap, topic_name
):
    await create_topic(kafka_bootstrap, topic_name, config=COMPACTED)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        for key, value in [(b"a", b"a1"), (b"b", b"b1"), (b"a", b"a2"), (b"b", None)]:
            await producer.send_and_wait(topic_name, value, key=key)

        async def compacted() -> bool:
            # a filler record after segment.ms rolls the segment holding the records above
            await producer.send_and_wait(topic_name, b"", key=b"filler")
            records = await read_all(kafka_bootstrap, topic_name)
            return [(r.key, r.value) for r in records if r.key != b"filler"] == [(b"a", b"a2")]

        await eventually(compacted, timeout_s=60.0, what="compaction with tombstone removal")
