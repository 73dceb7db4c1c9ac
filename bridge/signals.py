"""Re-snapshot requests on the signals topic: written by `dli-bridge resnapshot`, read by the
bridge, answered by the instance that owns the project's shard at the time.

A request is ``{"request_id", "project_id", "job_id" (or null), "requested_at"}`` keyed by the
project id. Every instance reads every partition of the topic from its beginning (requests
older than ``MAX_REQUEST_AGE_S`` are ignored) and hands requests for the projects it watches
to its scheduler, which answers them only while it owns the project's shard. Each job's state
record remembers the request ids its snapshot answered, in the same transaction as the
snapshot event, so a request read again — after a restart, or by the new owner after a
rebalance in the middle of an answer — is answered once per job, never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.settings import KafkaSettings
from bridge.sink import client_options, map_kafka_error

__all__ = ["MAX_REQUEST_AGE_S", "SignalReader", "SnapshotRequest", "send_request"]

log = logging.getLogger(__name__)

# A request read later than this after it was made is stale (a restart long after): ignored.
MAX_REQUEST_AGE_S = 3600.0
_TIMEOUT_S = 10.0
# The broker answers a fetch as soon as a request lands, so a long wait costs no latency; it
# saves an idle instance a fetch round trip every half second (aiokafka's default wait), and
# the fetch routine's wake-up every 200 ms (consumer_timeout_ms) with it. A fetch's answer
# must come within the request timeout, so that is the wait plus the usual timeout.
_FETCH_WAIT_MS = 15000
_READ_TIMEOUT_S = _FETCH_WAIT_MS / 1000 + _TIMEOUT_S


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Answer with one ``snapshot`` event per live job of ``project_id`` (or just ``job_id``)."""

    request_id: str
    project_id: str
    job_id: int | None = None
    requested_at: float = 0.0

    @classmethod
    def new(cls, project_id: str, job_id: int | None = None, request_id: str | None = None) -> Self:
        return cls(request_id or uuid.uuid4().hex, project_id, job_id, time.time())

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "project_id": self.project_id,
                "job_id": self.job_id,
                "requested_at": self.requested_at,
            }
        )

    @classmethod
    def decode(cls, value: bytes) -> Self:
        """ValueError when ``value`` is not a request."""
        try:
            doc = orjson.loads(value)
            job = doc.get("job_id")
            return cls(
                str(doc["request_id"]),
                str(doc["project_id"]),
                None if job is None else int(job),
                float(doc.get("requested_at", 0.0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a re-snapshot request: {exc!r}") from exc


async def send_request(kafka: KafkaSettings, request: SnapshotRequest) -> None:
    """Write ``request`` to the signals topic (keyed by project); raises SinkError."""
    producer = AIOKafkaProducer(
        **client_options(kafka, client_id="dli-bridge-resnapshot", request_timeout_s=_TIMEOUT_S)
    )
    topic = kafka.topics.signals
    try:
        async with asyncio.timeout(_TIMEOUT_S * 3):
            await producer.start()
            try:
                await producer.send_and_wait(
                    topic, request.encode(), key=request.project_id.encode()
                )
            finally:
                await producer.stop()
    except (KafkaError, TimeoutError) as exc:
        raise map_kafka_error(exc, f"writing to {topic}", topic=topic) from exc


class SignalReader:
    """Reads the signals topic in the background and hands each request to ``deliver``.

    An async context manager: entering starts the consumer (every partition, from the
    beginning) and its task; leaving cancels the task and stops the consumer.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        deliver: Callable[[SnapshotRequest], object],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kafka = kafka
        self._deliver = deliver
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SignalReader {self._kafka.topics.signals} running={self._task is not None}>"

    async def __aenter__(self) -> Self:
        options = client_options(
            self._kafka, client_id="dli-bridge-signals", request_timeout_s=_READ_TIMEOUT_S
        )
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            consumer_timeout_ms=_FETCH_WAIT_MS,
            **options,
        )
        topic = self._kafka.topics.signals
        try:
            async with asyncio.timeout(_TIMEOUT_S * 3):
                await consumer.start()
                partitions = await _partitions(consumer, topic)
                consumer.assign([TopicPartition(topic, p) for p in partitions])
                await consumer.seek_to_beginning()
        except (KafkaError, TimeoutError) as exc:
            await consumer.stop()
            raise map_kafka_error(exc, f"reading {topic}", topic=topic) from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer), name="signals")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=_FETCH_WAIT_MS)
            except KafkaError as exc:  # keep reading: the broker may come back
                log.warning("signals: read failed (%r)", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self._handle(record.value)

    def _handle(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            request = SnapshotRequest.decode(value)
        except ValueError as exc:
            log.warning("signals: ignoring a record that is not a request (%s)", exc)
            return
        if self._clock() - request.requested_at > MAX_REQUEST_AGE_S:
            log.debug("signals: request %s is stale; ignored", request.request_id)
            return
        self._deliver(request)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions (metadata may lag right after the topic was created)."""
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        await consumer._client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.1)
