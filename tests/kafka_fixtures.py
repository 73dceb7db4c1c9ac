"""The session's real Kafka broker (KAFKA_BOOTSTRAP_SERVERS or a LocalKafka) and topic helpers."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

from bridge.localkafka import DEFAULT_KAFKA_VERSION, LocalKafka

# FindCoordinator key types: a consumer group, a transactional id
_GROUP, _TRANSACTION = 0, 1


def kafka_version() -> str:
    """The Kafka version local brokers run: ``BRIDGE_KAFKA_VERSION``, else the pinned one.

    The deprecated ``DLI_BRIDGE_KAFKA_VERSION`` still counts, without the warning the
    product gives (pytest turns warnings into errors, and this is not the product).
    """
    env = os.environ
    return (
        env.get("BRIDGE_KAFKA_VERSION")
        or env.get("DLI_BRIDGE_KAFKA_VERSION")
        or DEFAULT_KAFKA_VERSION
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker, shared by the whole session.

    ``KAFKA_BOOTSTRAP_SERVERS`` points the tests at an existing cluster; otherwise a local
    broker starts (version from ``BRIDGE_KAFKA_VERSION``, default the pinned one). It
    runs in a private event loop: pytest-asyncio owns the global one, and the JVM outlives
    every test loop anyway.
    """
    loop = asyncio.new_event_loop()
    try:
        if configured := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            loop.run_until_complete(warm_up(configured))
            yield configured
            return
        kafka = LocalKafka(kafka_version())
        bootstrap = loop.run_until_complete(kafka.start())
        try:
            loop.run_until_complete(warm_up(bootstrap))
            yield bootstrap
        finally:
            loop.run_until_complete(kafka.stop())
    finally:
        loop.close()


async def warm_up(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Create __consumer_offsets and __transaction_state now, not inside the first test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            for key_type in (_GROUP, _TRANSACTION):
                await _find_coordinator(admin, f"warm-up-{uuid.uuid4().hex}", key_type)
    finally:
        await admin.close()


async def _find_coordinator(admin: AIOKafkaAdminClient, key: str, key_type: int) -> None:
    # the broker answers "not available" until it has created and loaded the internal topic
    while True:
        try:
            await admin.find_coordinator(key, key_type)
            return
        except (CoordinatorNotAvailableError, NotCoordinatorError):
            await asyncio.sleep(0.1)


def unique_name(request: pytest.FixtureRequest, kind: str) -> str:
    """A name no other test or run uses, readable in broker logs: ``<kind>-<test>-<hex>``."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80]
    return f"{kind}-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    return unique_name(request, "topic")


@pytest.fixture
def group_name(request: pytest.FixtureRequest) -> str:
    return unique_name(request, "group")


async def create_topic(
    bootstrap: str, name: str, *, partitions: int = 1, config: dict[str, str] | None = None
) -> str:
    """Create ``name`` (replication factor 1) with the admin client; return the name."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        async with asyncio.timeout(30.0):
            await admin.start()
            await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()
    return name


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it returns True; fail the test after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout_s:g}s")
        await asyncio.sleep(0.2)


async def read_records(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed"
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end (the last stable offset under read_committed),
    in (partition, offset) order, undecoded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False
    )
    await consumer.start()
    try:
        # a topic made moments ago: this fresh consumer's metadata may not know it yet
        async with asyncio.timeout(10.0):
            while not (partitions := consumer.partitions_for_topic(topic)):
                await consumer._client.force_metadata_update()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(*assigned, timeout_ms=200)
                for records in batches.values():
                    found += records
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
