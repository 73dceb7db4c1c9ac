"""KafkaSink against a real broker, and MemorySink: topics, transactions, fencing, restore."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bridge.errors import ConfigError, ProducerFencedError, SinkError, SinkUnavailable
from bridge.events import OutRecord, StateValue, job_key, state_record, state_tombstone
from bridge.settings import KafkaSettings, TopicsSettings
from bridge.sink import Batch, KafkaSink, MemorySink
from bridge.state import RestoreStats
from tests.kafka_fixtures import create_topic, read_records, unique_name

SHARDS = 2


PROJECT = "p-1"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def key(job_id: int) -> bytes:
    return job_key(PROJECT, job_id)


def state(job_id: int, tag: str | None, generation: int = 0) -> OutRecord:
    """A real state record of job ``job_id`` whose snapshot says ``tag`` (None: tombstone)."""
    if tag is None:
        return state_tombstone(PROJECT, job_id, generation)
    return state_record(
        project_id=PROJECT,
        job_id=job_id,
        sequence=1,
        snapshot=orjson.dumps({"tag": tag}),
        fingerprint=b"\x01",
        row_fingerprint=None,
        observed_at=WHEN,
        generation=generation,
    )


def tags(restored: dict[bytes, StateValue] | None) -> dict[bytes, str]:
    assert restored is not None, "restored state expected, got 'kept' (None)"
    return {k: orjson.loads(v.snapshot)["tag"] for k, v in restored.items()}


def tag_of(value: bytes | None) -> str | None:
    return None if value is None else str(orjson.loads(value)["snapshot"]["tag"])


def event(key: bytes, value: bytes) -> OutRecord:
    return OutRecord(key=key, value=value, headers=(("schema_version", b"1"),))


def settings_for(bootstrap: str, request: pytest.FixtureRequest, **overrides: Any) -> KafkaSettings:
    topics = TopicsSettings(
        events=unique_name(request, "events"),
        state=unique_name(request, "state"),
        dlq=unique_name(request, "dlq"),
    )
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "transactional_id_prefix": unique_name(request, "txn"),
        "partitions": SHARDS,
        "commit_timeout_s": 10.0,
        "topics": topics,
        **overrides,
    }
    return KafkaSettings(**values)


async def read_topic(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed"
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record in every partition of ``topic``, up to its end."""
    records = await read_records(bootstrap, topic, isolation_level=isolation_level)
    return [(r.key, r.value) for r in records]


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_code, _msg, _type, _name, entries)] = response.resources
        return {e[0]: e[1] for e in entries}
    finally:
        await admin.close()


# --- MemorySink -----------------------------------------------------------------------------


async def test_memory_sink_roundtrip_and_tombstone():
    sink = MemorySink(partitions=SHARDS)
    async with sink:
        writer, restored = await sink.open_shard(1)
        assert restored == {}
        await writer.write(
            Batch(
                events=[event(b"p/1", b"e1")],
                state=[state(1, "s1"), state(2, "s2")],
            )
        )
        await writer.write(Batch(state=[state(2, None)]))
        _, restored = await sink.open_shard(1)
    assert tags(restored) == {key(1): "s1"}
    assert [tag_of(r.value) for r in sink.log[sink.topics.state][1]] == ["s1", "s2", None]
    assert [r.value for r in sink.records(sink.topics.events)] == [b"e1"]
    assert sink.last_restore[1].records == 3


async def test_memory_sink_reopen_fences_previous_writer():
    sink = MemorySink(partitions=SHARDS)
    old, _ = await sink.open_shard(0)
    new, _ = await sink.open_shard(0)
    with pytest.raises(ProducerFencedError):
        await old.write(Batch(state=[state(7, "old")]))
    await new.write(Batch(state=[state(7, "new")]))
    await sink.close_shard(0)
    with pytest.raises(ProducerFencedError):
        await new.write(Batch(state=[state(7, "late")]))


async def test_memory_sink_injected_failures_write_nothing():
    seen: list[RestoreStats] = []
    sink = MemorySink(partitions=SHARDS, on_restore=seen.append)
    writer, _ = await sink.open_shard(0)
    sink.fail_next(2)
    for _ in range(2):
        with pytest.raises(SinkUnavailable):
            await writer.write(Batch(events=[event(b"k", b"e")], state=[state(7, "s")]))
    await writer.write(Batch(events=[event(b"k", b"e")]))
    assert sink.writes == 1
    assert len(sink.records(sink.topics.events)) == 1
    assert sink.records(sink.topics.state) == []
    assert [s.shard for s in seen] == [0]


async def test_memory_sink_restore_ignores_older_generation():
    sink = MemorySink(partitions=SHARDS)
    writer, _ = await sink.open_shard(0, generation=2)
    await writer.write(Batch(state=[state(1, "a2", 2), state(1, "stale", 1)]))
    _, restored = await sink.open_shard(0, generation=3)
    assert tags(restored) == {key(1): "a2"}
    assert sink.last_restore[0].skipped_stale == 1


async def test_memory_sink_rejects_unknown_shard():
    with pytest.raises(ValueError, match="outside"):
        await MemorySink(partitions=SHARDS).open_shard(SHARDS)


# --- KafkaSink on a real broker ----------------------------------------------------------------

integration = pytest.mark.integration


@integration
async def test_topics_created_with_their_policies(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request)
    async with KafkaSink(settings) as sink:
        assert sink.shards == SHARDS
    topics = settings.topics
    state_config = await topic_config(kafka_bootstrap, topics.state)
    assert state_config["cleanup.policy"] == "compact"
    assert state_config["min.compaction.lag.ms"] == "60000"
    assert state_config["segment.ms"] == "3600000"
    events_config = await topic_config(kafka_bootstrap, topics.events)
    assert events_config["cleanup.policy"] == "delete"
    assert events_config["retention.ms"] == str(30 * 24 * 3600 * 1000)
    assert (await topic_config(kafka_bootstrap, topics.dlq))["cleanup.policy"] == "delete"
    async with KafkaSink(settings):  # existing, right policies: starts again
        pass


@integration
@pytest.mark.parametrize(
    ("which", "policy", "message"),
    [
        ("state", "delete", "state topic .* cleanup.policy=delete; it must be compact"),
        ("events", "compact", "topic .* cleanup.policy=compact; it must be delete"),
    ],
)
async def test_wrong_cleanup_policy_refused(kafka_bootstrap, request, which, policy, message):
    settings = settings_for(kafka_bootstrap, request)
    name = getattr(settings.topics, which)
    await create_topic(kafka_bootstrap, name, partitions=SHARDS, config={"cleanup.policy": policy})
    with pytest.raises(ConfigError, match=message) as caught:
        async with KafkaSink(settings):
            pass
    assert name in str(caught.value)


@integration
async def test_a_topic_the_metadata_does_not_show_yet_is_checked_too(
    kafka_bootstrap, request, monkeypatch
):
    """Metadata lags a topic created a moment ago: creating it says it exists, and then its
    cleanup policy is checked like any existing topic's (it used to be taken as ours)."""
    settings = settings_for(kafka_bootstrap, request)
    name = settings.topics.events
    compact = {"cleanup.policy": "compact"}
    await create_topic(kafka_bootstrap, name, partitions=SHARDS, config=compact)

    async def behind(self: AIOKafkaAdminClient) -> list[str]:
        return []

    monkeypatch.setattr(AIOKafkaAdminClient, "list_topics", behind)
    with pytest.raises(ConfigError, match=r"cleanup\.policy=compact; it must be delete") as caught:
        async with KafkaSink(settings):
            pass
    assert name in str(caught.value)


@integration
async def test_unreachable_broker_fails_fast_naming_servers(unused_tcp_port):
    servers = f"127.0.0.1:{unused_tcp_port}"
    settings = KafkaSettings(bootstrap_servers=servers)
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match=servers):
        async with KafkaSink(settings, request_timeout_s=2.0):
            pass
    assert time.monotonic() - started < 8.0


@integration
async def test_write_restore_roundtrip_and_tombstone(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request)
    seen: list[RestoreStats] = []
    async with KafkaSink(settings, on_restore=seen.append) as sink:
        writer, restored = await sink.open_shard(1, generation=1)
        assert restored == {}
        await writer.write(
            Batch(
                events=[event(b"p/1", b"e1"), event(b"p/2", b"e2")],
                state=[state(1, "s1", 1), state(2, "s2", 1)],
                dead_letters=[event(b"p/3", b"bad body")],
            )
        )
        await writer.write(Batch(events=[event(b"p/2", b"deleted")], state=[state(2, None, 1)]))
        await sink.close_shard(1)
        _, restored = await sink.open_shard(1, generation=1)
        assert tags(restored) == {key(1): "s1"}
        _, other = await sink.open_shard(0)
        assert other == {}
    assert seen[-2].shard == 1
    assert seen[-2].records == 3
    assert seen[-2].keys == 1
    topics = settings.topics
    events = await read_topic(kafka_bootstrap, topics.events)
    assert sorted(events) == [(b"p/1", b"e1"), (b"p/2", b"deleted"), (b"p/2", b"e2")]
    assert await read_topic(kafka_bootstrap, topics.dlq) == [(b"p/3", b"bad body")]


@integration
async def test_reopening_a_shard_fences_the_first_writer(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request)
    async with KafkaSink(settings) as first, KafkaSink(settings) as second:
        zombie, _ = await first.open_shard(0)
        await zombie.write(Batch(state=[state(7, "before")]))
        successor, restored = await second.open_shard(0)
        assert tags(restored) == {key(7): "before"}
        with pytest.raises(ProducerFencedError):
            await zombie.write(Batch(events=[event(b"k", b"zombie")], state=[state(7, "z")]))
        with pytest.raises(SinkError, match="broken"):
            await zombie.write(Batch(state=[state(7, "again")]))
        await successor.write(Batch(state=[state(7, "after")]))
    topics = settings.topics
    assert await read_topic(kafka_bootstrap, topics.events) == []
    states = await read_topic(kafka_bootstrap, topics.state)
    assert [(k, tag_of(v)) for k, v in states] == [(key(7), "before"), (key(7), "after")]


@integration
async def test_aborted_transaction_invisible_and_not_restored(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request)
    async with KafkaSink(settings) as sink:
        await sink.open_shard(0)
        # an open transaction of a previous owner: the next open_shard must abort it
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            transactional_id=f"{settings.transactional_id_prefix}-0",
        )
        async with producer:
            await producer.begin_transaction()
            await producer.send_and_wait(settings.topics.state, b"never", key=b"k", partition=0)
            _, restored = await sink.open_shard(0)
        assert restored == {}
    uncommitted = await read_topic(
        kafka_bootstrap, settings.topics.state, isolation_level="read_uncommitted"
    )
    assert uncommitted == [(b"k", b"never")]  # in the log, hidden by the abort marker
    assert await read_topic(kafka_bootstrap, settings.topics.state) == []


@integration
async def test_restore_ignores_records_of_an_older_generation(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request)
    async with KafkaSink(settings) as sink:
        writer, _ = await sink.open_shard(0, generation=5)
        await writer.write(Batch(state=[state(1, "a5", 5), state(2, "b5", 5)]))
        # a stale owner (generation 4) got its write in after the generation-5 owner
        await writer.write(Batch(state=[state(1, "stale", 4), state(2, None, 4)]))
        _, restored = await sink.open_shard(0, generation=6)
    assert tags(restored) == {key(1): "a5", key(2): "b5"}
    assert sink.last_restore[0].skipped_stale == 2
    assert sink.last_restore[0].generation == 5


@integration
async def test_restore_finishes_when_the_partition_ends_with_a_commit_marker(
    kafka_bootstrap, request
):
    """The last entry of the state partition is a transaction marker, not a record."""
    settings = settings_for(kafka_bootstrap, request)
    async with KafkaSink(settings) as sink:
        writer, _ = await sink.open_shard(1)
        await writer.write(Batch(state=[state(7, "v")]))
        async with asyncio.timeout(10.0):
            _, restored = await sink.open_shard(1)
    assert tags(restored) == {key(7): "v"}
    stats = sink.last_restore[1]
    assert stats.end_offset == 2  # the record at 0, the commit marker at 1
    assert stats.records == 1


@integration
async def test_commit_past_its_deadline_aborts_and_raises(kafka_bootstrap, request, monkeypatch):
    settings = settings_for(kafka_bootstrap, request, commit_timeout_s=1.0)
    async with KafkaSink(settings) as sink:
        writer, _ = await sink.open_shard(0)

        async def hang(self: AIOKafkaProducer) -> None:
            await asyncio.Event().wait()

        with monkeypatch.context() as patch:
            patch.setattr(AIOKafkaProducer, "commit_transaction", hang)
            started = time.monotonic()
            with pytest.raises(SinkUnavailable, match="shard 0"):
                await writer.write(Batch(events=[event(b"k", b"e")], state=[state(7, "s")]))
            assert time.monotonic() - started < 5.0
        with pytest.raises(SinkError, match="broken"):
            await writer.write(Batch(state=[state(7, "s")]))
        writer, restored = await sink.open_shard(0)
        assert restored == {}
        await writer.write(Batch(state=[state(7, "s2")]))
    assert await read_topic(kafka_bootstrap, settings.topics.events) == []
    states = await read_topic(kafka_bootstrap, settings.topics.state)
    assert [(k, tag_of(v)) for k, v in states] == [(key(7), "s2")]


@integration
async def test_at_least_once_writes_events_then_state(kafka_bootstrap, request):
    settings = settings_for(kafka_bootstrap, request, guarantee="at_least_once")
    async with KafkaSink(settings) as sink:
        writer, _ = await sink.open_shard(1)
        await writer.write(Batch(events=[event(b"k", b"e")], state=[state(7, "s")]))
        await sink.close_shard(1)
        _, restored = await sink.open_shard(1)
    assert tags(restored) == {key(7): "s"}
    assert await read_topic(kafka_bootstrap, settings.topics.events) == [(b"k", b"e")]


def test_topic_admin_moved_to_topics_and_stays_importable_from_sink():
    from bridge import sink, topics

    for name in ("Topics", "TopicAdmin", "map_kafka_error"):
        assert getattr(sink, name) is getattr(topics, name)
        assert name in sink.__all__
