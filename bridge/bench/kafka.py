"""The benchmark's Kafka edge: a LogAppendTime events topic per row, and its committed events.

Each bridge row gets a fresh events topic created here before the bridge starts, with
``message.timestamp.type=LogAppendTime`` so a record's timestamp is the broker's append
time (the bridge accepts an existing events topic whose cleanup policy is ``delete``).
Reading it back is a ``read_committed`` consumer without a group, from the first record
at or after a given time to the end offsets of that moment.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from bridge.bench.report import EventKey
from bridge.errors import BenchError

__all__ = ["Commit", "EventKey", "committed", "create_events_topic"]

log = logging.getLogger(__name__)

Commit = tuple[EventKey, int]  # (project, job, status_after), record timestamp in ms
_TIMEOUT_S = 60.0


async def create_events_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` (delete policy, LogAppendTime) and wait until it has leaders."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    config = {"message.timestamp.type": "LogAppendTime", "cleanup.policy": "delete"}
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            await admin.start()
            await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
            while True:
                described = await admin.describe_topics([topic])
                parts = described[0].get("partitions", []) if described else []
                if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                    return
                await asyncio.sleep(0.1)
    except (KafkaError, TimeoutError) as exc:
        raise BenchError(f"cannot create the events topic {topic}: {exc!r}") from exc
    finally:
        await admin.close()


def _commit(key: bytes | None, value: bytes | None, timestamp: int) -> Commit | None:
    if value is None:
        return None
    data = orjson.loads(value).get("data") or {}
    project, job = str(data.get("project_id")), int(data.get("job_id", -1))
    return (project, job, data.get("status_after")), timestamp


async def committed(bootstrap: str, topic: str, partitions: int, *, since_ms: int) -> list[Commit]:
    """Every committed event of ``topic`` stamped at or after ``since_ms``, up to its end now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    out: list[Commit] = []
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            await consumer.start()
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            starts = await consumer.offsets_for_times({tp: since_ms for tp in parts})
            for tp in parts:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
            await _read_to(consumer, ends, out)
    except (KafkaError, TimeoutError) as exc:
        raise BenchError(f"cannot read the events topic {topic}: {exc!r}") from exc
    finally:
        await consumer.stop()
    return out


async def _read_to(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], out: list[Commit]
) -> None:
    pending = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for records in batches.values():
            for record in records:
                commit = _commit(record.key, record.value, record.timestamp)
                if commit is not None:
                    out.append(commit)
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
