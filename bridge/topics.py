"""Kafka topics: their names, creating the missing ones, refusing a wrong cleanup policy.

Also the mapping of aiokafka failures to bridge errors, which the topic admin, the sink and
the signals reader share (``sink.py`` re-exports it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Self

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    NodeNotReadyError,
    ProducerFenced,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.errors import for_code as error_for_code

from bridge.errors import ConfigError, ProducerFencedError, SinkError, SinkUnavailable
from bridge.settings import KafkaSettings

__all__ = [
    "DEFAULT_EVENTS_RETENTION_MS",
    "DEFAULT_STATE_MIN_COMPACTION_LAG_MS",
    "DEFAULT_STATE_SEGMENT_MS",
    "TopicAdmin",
    "Topics",
    "map_kafka_error",
]

log = logging.getLogger(__name__)

METADATA_POLL_S = 0.1  # between two looks at a topic just created (ours or another's)

DEFAULT_EVENTS_RETENTION_MS = 30 * 24 * 3600 * 1000  # "long retention": 30 days
DEFAULT_STATE_MIN_COMPACTION_LAG_MS = 60 * 1000  # a tailing reader sees every state change
DEFAULT_STATE_SEGMENT_MS = 3600 * 1000  # the cleaner only compacts closed segments

# aiokafka errors that mean "the broker is not there or did not answer"
_UNAVAILABLE = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NoBrokersAvailable,
    RequestTimedOutError,
)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names (``settings.kafka.topics``)."""

    events: str
    state: str
    dlq: str
    watermarks: str = "dli.jobs.watermarks"
    signals: str = "dli.jobs.signals"

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> Self:
        topics = kafka.topics
        return cls(
            events=topics.events,
            state=topics.state,
            dlq=topics.dlq,
            watermarks=topics.watermarks,
            signals=topics.signals,
        )


def map_kafka_error(
    exc: BaseException, what: str, *, shard: int | None = None, topic: str | None = None
) -> SinkError:
    """The bridge error for an aiokafka (or timeout) failure of ``what``."""
    if isinstance(exc, ProducerFenced | InvalidProducerEpoch):
        return ProducerFencedError(f"{what}: producer fenced ({exc})", shard=shard, topic=topic)
    if isinstance(exc, (TimeoutError, *_UNAVAILABLE)):
        return SinkUnavailable(f"{what}: {exc or 'timed out'}", shard=shard, topic=topic)
    return SinkError(f"{what}: {exc!r}", shard=shard, topic=topic)


class TopicAdmin:
    """Creates missing topics and refuses ones with the wrong cleanup policy."""

    def __init__(
        self, kafka: KafkaSettings, topics: Topics, options: dict[str, Any], timeout_s: float
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._options = options
        self._timeout_s = timeout_s

    async def ensure(self, *, events_retention_ms: int) -> int:
        """Ensure the three topics; return the state topic's partition count (the shards)."""
        admin = AIOKafkaAdminClient(**self._options)
        servers = self._kafka.bootstrap_servers
        try:
            async with asyncio.timeout(self._timeout_s):
                await admin.start()
            async with asyncio.timeout(self._timeout_s * 3):
                return await self._ensure(admin, events_retention_ms)
        except (KafkaError, TimeoutError) as exc:
            raise map_kafka_error(exc, f"Kafka at {servers} (ensuring topics)") from exc
        finally:
            await admin.close()

    async def _ensure(self, admin: AIOKafkaAdminClient, events_retention_ms: int) -> int:
        wanted = self._wanted(events_retention_ms)
        existing = set(await admin.list_topics())
        missing = [t for name, t in wanted.items() if name not in existing]
        if missing:
            # a topic created a moment ago may not be in the metadata yet: it exists after all
            existing |= await self._create(admin, missing)
        await self._check_policies(admin, [name for name in wanted if name in existing])
        partitions = await _wait_for_metadata(admin, list(wanted))
        shards = partitions[self._topics.state]
        if shards != self._kafka.partitions:
            log.warning(
                "state topic %s has %d partitions (settings say %d): %d shards",
                self._topics.state,
                shards,
                self._kafka.partitions,
                shards,
            )
        return shards

    def _wanted(self, events_retention_ms: int) -> dict[str, NewTopic]:
        kafka, topics = self._kafka, self._topics
        delete = {"cleanup.policy": "delete", "retention.ms": str(events_retention_ms)}
        compact = {
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": str(DEFAULT_STATE_MIN_COMPACTION_LAG_MS),
            "segment.ms": str(DEFAULT_STATE_SEGMENT_MS),
        }
        # watermarks: delete, like events, so a reader replaying events finds the watermarks
        # that were interleaved with them (compaction would keep only the latest per project);
        # signals: delete too, a request is read once by the shard's owner at that time.
        configs = {
            topics.events: delete,
            topics.state: compact,
            topics.dlq: delete,
            topics.watermarks: delete,
            topics.signals: delete,
        }
        return {
            name: NewTopic(name, kafka.partitions, kafka.replication_factor, topic_configs=config)
            for name, config in configs.items()
        }

    async def _create(self, admin: AIOKafkaAdminClient, missing: list[NewTopic]) -> set[str]:
        """Create ``missing``; the names that turned out to exist already (their policy is
        someone else's: another instance won the race, or the metadata was behind)."""
        response = await admin.create_topics(missing)
        existed = set()
        for topic, code, message in response.topic_errors:
            error = error_for_code(code)
            if code == 0:
                log.info("created topic %s", topic)
            elif error is TopicAlreadyExistsError:
                existed.add(topic)
            else:
                raise SinkError(f"creating topic {topic} failed: {error.__name__} {message or ''}")
        return existed

    async def _check_policies(self, admin: AIOKafkaAdminClient, names: list[str]) -> None:
        if not names:
            return
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, n, {"cleanup.policy": None}) for n in names
        ]
        problems: list[str] = []
        for code, message, name, entries in await _describe(admin, resources):
            if code:
                raise SinkError(f"describing topic {name} failed: {message}", topic=name)
            policy = {e[0]: e[1] for e in entries}.get("cleanup.policy") or "delete"
            problems += self._policy_problems(name, set(policy.split(",")))
        if problems:
            raise ConfigError("Kafka topics have the wrong cleanup policy", problems)

    def _policy_problems(self, name: str, policy: set[str]) -> list[str]:
        shown = ",".join(sorted(policy))
        if name == self._topics.state and "compact" not in policy:
            return [f"state topic {name} has cleanup.policy={shown}; it must be compact"]
        if name != self._topics.state and "compact" in policy:
            return [f"topic {name} has cleanup.policy={shown}; it must be delete (not compact)"]
        return []


async def _describe(
    admin: AIOKafkaAdminClient, resources: list[ConfigResource]
) -> list[tuple[int, str | None, str, Any]]:
    """(error code, message, topic, config entries) per topic; a topic the broker does not know
    yet (created a moment ago, its metadata behind) is asked again until it is known."""
    while True:
        found = [
            (code, message, name, entries)
            for response in await admin.describe_configs(resources)
            for code, message, _type, name, entries in response.resources
        ]
        if not any(code == UnknownTopicOrPartitionError.errno for code, *_ in found):
            return found
        await asyncio.sleep(METADATA_POLL_S)


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Poll metadata until every topic has all partitions with a leader; return the counts.

    A client right after CreateTopics may otherwise see no partitions until its next
    metadata refresh (DESIGN.md pitfalls). The caller bounds the wait.
    """
    while True:
        described = await admin.describe_topics(names)
        ready = {
            t["topic"]: len(t["partitions"])
            for t in described
            if t["error_code"] == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if len(ready) == len(names):
            return ready
        await asyncio.sleep(METADATA_POLL_S)
