"""The Kafka edge: one transactional producer per shard, and the shard's state restore.

Topics are created and checked on enter (``topics.py``). Every aiokafka exception is mapped
to a bridge error here or in ``topics.py`` (SinkError and subclasses, ConfigError for a topic
with the wrong cleanup policy) and never leaves these modules or ``state.py``.
``MemorySink`` speaks the same protocol in memory, for tests and demos.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from bridge.errors import ProducerFencedError, SinkError, SinkUnavailable
from bridge.events import OutRecord, StateValue, parse_state
from bridge.settings import KafkaSettings
from bridge.sharding import partition_of
from bridge.state import Fold, RestoreStats, read_partition
from bridge.topics import DEFAULT_EVENTS_RETENTION_MS, TopicAdmin, Topics, map_kafka_error

__all__ = [
    "Batch",
    "KafkaSink",
    "MemorySink",
    "RestoreStats",
    "ShardWriter",
    "Sink",
    "TopicAdmin",
    "Topics",
    "map_kafka_error",
]

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
MIN_TRANSACTION_TIMEOUT_MS = 60_000

RestoreCallback = Callable[[RestoreStats], None]


@dataclass(frozen=True, slots=True)
class Batch:
    """One poll cycle of one shard, written atomically (one transaction under exactly-once)."""

    events: Sequence[OutRecord] = ()
    state: Sequence[OutRecord] = ()  # to the state topic, partition = shard, explicitly
    dead_letters: Sequence[OutRecord] = ()
    # per-project "observed through" records: in the same transaction as the cycle's events
    watermarks: Sequence[OutRecord] = ()

    def __bool__(self) -> bool:
        return bool(self.events or self.state or self.dead_letters or self.watermarks)


class ShardWriter(Protocol):
    """Writes a shard's batches. After any SinkError it is broken: close and reopen the shard.

    ``state_end`` is the state partition's last stable offset right after this writer's
    last write (or the restore): a later owner of the same shard that finds it unchanged
    can keep the state it holds instead of restoring. ``newest_generation`` is the highest
    generation stamp the restore saw (0 when the state was kept or the partition is empty).
    """

    shard: int
    state_end: int | None
    newest_generation: int

    async def write(self, batch: Batch) -> None: ...


StillOurs = Callable[[], bool]


class Sink(Protocol):
    """Opens shards (fence the previous owner, check, then restore) and closes them.

    ``open_shard`` calls ``still_ours()`` right after the producer fenced the previous
    owner, before reading or writing anything: False raises ProducerFencedError (the
    assignment moved on while we started; a stale owner must not write). With
    ``known_end`` (the ``state_end`` of our previous writer of this shard) and an unchanged
    partition, the restored state is None: keep the state held in memory.
    """

    async def open_shard(
        self,
        shard: int,
        generation: int = 0,
        *,
        still_ours: StillOurs | None = None,
        known_end: int | None = None,
    ) -> tuple[ShardWriter, dict[bytes, StateValue] | None]: ...

    async def close_shard(self, shard: int) -> None: ...


def client_options(
    kafka: KafkaSettings, *, client_id: str, request_timeout_s: float
) -> dict[str, Any]:
    """aiokafka keywords every client of ours shares: servers, security, timeouts."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": client_id,
        "request_timeout_ms": int(request_timeout_s * 1000),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class KafkaSink:
    """The Kafka sink: ensures topics on enter, owns one producer per open shard.

    Lifecycle: ``async with KafkaSink(settings.kafka) as sink`` → ``open_shard`` / writes /
    ``close_shard`` → exit closes every shard still open. Exactly-once: producer
    ``<transactional_id_prefix>-<shard>``; at-least-once: one idempotent producer for all.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Topics | None = None,
        *,
        client_id: str = "dli-bridge",
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        events_retention_ms: int = DEFAULT_EVENTS_RETENTION_MS,
        on_restore: RestoreCallback | None = None,
    ) -> None:
        self._kafka = kafka
        self.topics = topics or Topics.from_settings(kafka)
        self._client_id = client_id
        self._request_timeout_s = request_timeout_s
        self._events_retention_ms = events_retention_ms
        self._on_restore = on_restore
        self._writers: dict[int, _Writer] = {}
        self._shared: AIOKafkaProducer | None = None  # at-least-once producer
        self._state = _State.UNOPENED
        self.shards = kafka.partitions  # the state topic's real partition count after enter
        self.last_restore: dict[int, RestoreStats] = {}

    @property
    def exactly_once(self) -> bool:
        return self._kafka.guarantee == "exactly_once"

    def _options(self, suffix: str) -> dict[str, Any]:
        return client_options(
            self._kafka,
            client_id=f"{self._client_id}-{suffix}",
            request_timeout_s=self._request_timeout_s,
        )

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"KafkaSink cannot be entered when {self._state.value}")
        admin = TopicAdmin(
            self._kafka, self.topics, self._options("admin"), self._request_timeout_s
        )
        self.shards = await admin.ensure(events_retention_ms=self._events_retention_ms)
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        for shard in list(self._writers):
            await self.close_shard(shard)
        if self._shared is not None:
            await _stop_producer(self._shared)
            self._shared = None

    async def open_shard(
        self,
        shard: int,
        generation: int = 0,
        *,
        still_ours: StillOurs | None = None,
        known_end: int | None = None,
    ) -> tuple[ShardWriter, dict[bytes, StateValue] | None]:
        """Start the shard's producer (fencing any previous owner), check we still own the
        shard, then restore its state (None: unchanged since ``known_end``, keep yours)."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"open_shard on a KafkaSink that is {self._state.value}")
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} outside 0..{self.shards - 1}")
        await self.close_shard(shard)
        producer = await self._producer_for(shard)
        writer = _Writer(self, producer, shard, generation, own_producer=self.exactly_once)
        self._writers[shard] = writer
        try:
            _check_owner(shard, generation, still_ours)
            state = await self._restore(shard, known_end)
        except SinkError:
            await self.close_shard(shard)
            raise
        writer.state_end = self.last_restore[shard].end_offset
        writer.newest_generation = self.last_restore[shard].generation
        return writer, state

    async def close_shard(self, shard: int) -> None:
        """Abort the shard's open transaction, if any, and stop its producer (bounded)."""
        writer = self._writers.pop(shard, None)
        if writer is not None:
            await writer.close()

    async def _producer_for(self, shard: int) -> AIOKafkaProducer:
        if self.exactly_once:
            return await self._start_producer(
                f"shard-{shard}",
                transactional_id=f"{self._kafka.transactional_id_prefix}-{shard}",
                transaction_timeout_ms=max(
                    MIN_TRANSACTION_TIMEOUT_MS, int(self._kafka.commit_timeout_s * 2000)
                ),
            )
        if self._shared is None or _is_dead(self._shared):
            if self._shared is not None:
                await _stop_producer(self._shared)
            self._shared = await self._start_producer("alo")
        return self._shared

    async def _start_producer(self, suffix: str, **transactional: Any) -> AIOKafkaProducer:
        # InitProducerId (inside start) bumps the epoch of the transactional id: the previous
        # owner is fenced and its open transaction aborted before we read the state partition
        producer = AIOKafkaProducer(
            **self._options(suffix),
            enable_idempotence=True,
            acks="all",
            max_request_size=max(1_048_576, self._kafka.max_record_bytes + 1024),
            **transactional,
        )
        try:
            async with asyncio.timeout(self._request_timeout_s * 2):
                await producer.start()
        except (KafkaError, TimeoutError) as exc:
            await _stop_producer(producer)
            raise map_kafka_error(
                exc, f"starting producer {suffix} at {self._kafka.bootstrap_servers}"
            ) from exc
        return producer

    async def _restore(self, shard: int, known_end: int | None) -> dict[bytes, StateValue] | None:
        fold, stats = await read_partition(
            self._options(f"restore-{shard}"),
            self.topics.state,
            shard,
            stall_timeout_s=self._request_timeout_s * 2,
            unless_end=known_end,
        )
        self.last_restore[shard] = stats
        if fold is None:
            log.info(
                "shard %d unchanged since our last write (end offset %d): state kept",
                shard,
                stats.end_offset,
            )
        else:
            log.info(
                "restored shard %d: %d keys from %d records in %.3fs (end offset %d)",
                shard,
                stats.keys,
                stats.records,
                stats.seconds,
                stats.end_offset,
            )
        if self._on_restore is not None:
            self._on_restore(stats)
        return None if fold is None else _parse_states(fold.values, shard)


def _check_owner(shard: int, generation: int, still_ours: StillOurs | None) -> None:
    # After InitProducerId fenced the previous owner, before anything is read or written:
    # a member whose assignment moved on meanwhile is the stale owner aiokafka's v0
    # transactions cannot refuse (no KIP-447); it must not write (DESIGN.md).
    if still_ours is not None and not still_ours():
        raise ProducerFencedError(
            f"shard {shard} is no longer assigned to us in generation {generation}", shard=shard
        )


def _route(topics: Topics, batch: Batch, shard: int) -> list[tuple[str, int | None, OutRecord]]:
    """(topic, partition, record) for every record of ``batch``; None = partition by key."""
    return [
        *((topics.events, None, r) for r in batch.events),
        *((topics.state, shard, r) for r in batch.state),
        *((topics.dlq, None, r) for r in batch.dead_letters),
        *((topics.watermarks, None, r) for r in batch.watermarks),
    ]


def _parse_states(values: Mapping[bytes, bytes], shard: int) -> dict[bytes, StateValue]:
    state: dict[bytes, StateValue] = {}
    for key, value in values.items():
        try:
            state[key] = parse_state(value)
        except ValueError:
            # a record we cannot read must not block the shard; the job is rediscovered
            log.exception("state record %r of shard %d is unreadable; dropped", key, shard)
    return state


class _Writer:
    """A shard's writer: one transaction per batch (exactly-once) or events-then-state."""

    def __init__(
        self,
        sink: KafkaSink,
        producer: AIOKafkaProducer,
        shard: int,
        generation: int,
        *,
        own_producer: bool,
    ) -> None:
        self.shard = shard
        self.generation = generation
        self._sink = sink
        self._producer = producer
        self._own_producer = own_producer
        self._deadline_s = sink._kafka.commit_timeout_s
        self.broken: SinkError | None = None
        self.state_end: int | None = None
        self.newest_generation = 0

    async def write(self, batch: Batch) -> None:
        if self.broken is not None:
            raise SinkError(
                f"shard {self.shard} writer is broken ({self.broken.message}); reopen the shard",
                shard=self.shard,
            )
        if not batch:
            return
        try:
            async with asyncio.timeout(self._deadline_s):
                if self._own_producer:
                    await self._transaction(batch)
                else:
                    await self._in_order(batch)
        except (KafkaError, TimeoutError, AssertionError) as exc:
            # AssertionError: aiokafka's transaction state machine refuses a transition
            # (e.g. commit after the sender died); the producer is unusable either way
            self.broken = map_kafka_error(exc, f"write to shard {self.shard}", shard=self.shard)
            await self._abort_if_open()
            raise self.broken from exc
        except asyncio.CancelledError:
            # cancelled mid-transaction: close_shard aborts what is open
            self.broken = SinkError("write cancelled", shard=self.shard)
            raise

    async def _transaction(self, batch: Batch) -> None:
        await self._producer.begin_transaction()
        if batch.state:
            self.state_end = None  # unknown until the commit returns
        routed = _route(self._sink.topics, batch, self.shard)
        written = await _send_all(self._producer, routed)
        await self._producer.commit_transaction()
        # the commit marker takes one offset after our last state record
        self._note_state_end(written, marker=1)

    async def _in_order(self, batch: Batch) -> None:
        # at-least-once: events acknowledged before the state that says they were published
        topics = self._sink.topics
        if batch.state:
            self.state_end = None
        await _send_all(self._producer, [(topics.events, None, r) for r in batch.events])
        written = await _send_all(
            self._producer, [(topics.state, self.shard, r) for r in batch.state]
        )
        await _send_all(self._producer, [(topics.dlq, None, r) for r in batch.dead_letters])
        await _send_all(self._producer, [(topics.watermarks, None, r) for r in batch.watermarks])
        self._note_state_end(written, marker=0)

    def _note_state_end(self, written: Sequence[Any], *, marker: int) -> None:
        offsets = [m.offset for m in written if m.topic == self._sink.topics.state]
        if offsets:
            self.state_end = max(offsets) + 1 + marker
        # a batch without state records leaves the partition (and state_end) unknown: the
        # next owner restores, which is always correct

    async def _abort_if_open(self) -> None:
        # Only IN_TRANSACTION / ABORTABLE_ERROR may abort (TransactionState.is_transition_valid);
        # a commit that timed out stays COMMITTING: the next owner's InitProducerId resolves it.
        manager = self._producer._txn_manager if self._own_producer else None
        if manager is None:
            return
        if manager.is_fatal_error():
            _retrieve(manager.wait_for_transaction_end())  # the sender already failed it
            return
        if not (manager.is_in_transaction() or _abortable(manager)):
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._producer.abort_transaction()
        except (KafkaError, TimeoutError, AssertionError) as exc:
            log.warning("shard %d: abort after a failed write failed too: %r", self.shard, exc)

    async def close(self) -> None:
        await self._abort_if_open()
        if self._own_producer:
            await _stop_producer(self._producer)


def _retrieve(waiter: Any) -> None:
    if waiter is not None and waiter.done() and not waiter.cancelled():
        waiter.exception()


def _abortable(manager: Any) -> bool:
    return bool(manager.state.name == "ABORTABLE_ERROR")


async def _send_all(
    producer: AIOKafkaProducer, routed: Sequence[tuple[str, int | None, OutRecord]]
) -> list[Any]:
    """Send every record; return their RecordMetadata (the first failure is raised)."""
    futures = [
        await producer.send(
            topic, record.value, key=record.key, partition=partition, headers=list(record.headers)
        )
        for topic, partition, record in routed
    ]
    # every outcome is retrieved (no "exception never retrieved"); the first failure is raised
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _is_dead(producer: AIOKafkaProducer) -> bool:
    task = producer._sender.sender_task
    return task is not None and bool(task.done())


async def _stop_producer(producer: AIOKafkaProducer) -> None:
    """Stop within CLOSE_TIMEOUT_S; a producer that cannot flush (broker gone) is cut off."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await producer.stop()
    except TimeoutError:
        log.warning("producer did not stop within %.1fs; closing its connections", CLOSE_TIMEOUT_S)
        await producer._sender.close()
        await producer.client.close()
    except KafkaError as exc:
        log.warning("producer stop failed: %r", exc)


class MemorySink:
    """The Sink protocol in memory, for scheduler tests and demos.

    ``log[topic][partition]`` holds the written records in order. Opening a shard again
    fences the previous writer (its writes raise ProducerFencedError) and restores what
    was written to the shard's state partition, generation filter included.
    ``fail_next(n)`` makes the next ``n`` writes fail without writing anything.
    """

    def __init__(
        self,
        *,
        partitions: int = 12,
        topics: Topics | None = None,
        on_restore: RestoreCallback | None = None,
    ) -> None:
        self.topics = topics or Topics("dli.jobs.events", "dli.jobs.state", "dli.jobs.dlq")
        self.shards = partitions
        self.log: dict[str, list[list[OutRecord]]] = {
            name: [[] for _ in range(partitions)]
            for name in (
                self.topics.events,
                self.topics.state,
                self.topics.dlq,
                self.topics.watermarks,
                self.topics.signals,
            )
        }
        self.last_restore: dict[int, RestoreStats] = {}
        self.writes = 0  # successful writes (batches)
        self._on_restore = on_restore
        self._epochs: dict[int, int] = {}
        self._failures: list[SinkError] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._epochs.clear()

    def fail_next(self, count: int = 1, error: SinkError | None = None) -> None:
        """Make the next ``count`` writes raise ``error`` (default SinkUnavailable)."""
        self._failures += [error or SinkUnavailable("injected failure")] * count

    def records(self, topic: str) -> list[OutRecord]:
        """Every record of ``topic``, partition by partition, each in offset order."""
        return [record for partition in self.log[topic] for record in partition]

    async def open_shard(
        self,
        shard: int,
        generation: int = 0,
        *,
        still_ours: StillOurs | None = None,
        known_end: int | None = None,
    ) -> tuple[ShardWriter, dict[bytes, StateValue] | None]:
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} outside 0..{self.shards - 1}")
        epoch = self._epochs.get(shard, 0) + 1
        self._epochs[shard] = epoch
        _check_owner(shard, generation, still_ours)
        writer = _MemoryWriter(self, shard, epoch)
        end = len(self.log[self.topics.state][shard])
        if known_end == end:
            self.last_restore[shard] = RestoreStats(shard, 0, 0, 0, end, 0, 0.0, kept=True)
            return writer, None
        fold = Fold()
        for record in self.log[self.topics.state][shard]:
            fold.add(record.key, record.value, record.headers)
        stats = RestoreStats(
            shard=shard,
            records=fold.records,
            keys=len(fold.values),
            skipped_stale=fold.skipped_stale,
            end_offset=len(self.log[self.topics.state][shard]),
            generation=fold.generation,
            seconds=0.0,
        )
        self.last_restore[shard] = stats
        if self._on_restore is not None:
            self._on_restore(stats)
        writer.newest_generation = fold.generation
        return writer, _parse_states(fold.values, shard)

    async def close_shard(self, shard: int) -> None:
        self._epochs[shard] = self._epochs.get(shard, 0) + 1

    async def _write(self, shard: int, epoch: int, batch: Batch) -> None:
        if self._epochs.get(shard) != epoch:
            raise ProducerFencedError(f"shard {shard} writer was fenced or closed", shard=shard)
        if self._failures:
            raise self._failures.pop(0)
        for topic, partition, record in _route(self.topics, batch, shard):
            index = partition_of(record.key, self.shards) if partition is None else partition
            self.log[topic][index].append(record)
        self.writes += 1


class _MemoryWriter:
    def __init__(self, sink: MemorySink, shard: int, epoch: int) -> None:
        self.shard = shard
        self._sink = sink
        self._epoch = epoch
        self.state_end: int | None = len(sink.log[sink.topics.state][shard])
        self.newest_generation = 0

    async def write(self, batch: Batch) -> None:
        await self._sink._write(self.shard, self._epoch, batch)
        self.state_end = len(self._sink.log[self._sink.topics.state][self.shard])
