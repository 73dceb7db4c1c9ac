"""Restore one shard's state: its state partition read ``read_committed`` to the end, folded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.errors import SinkError, SinkUnavailable

__all__ = ["GENERATION_HEADER", "Fold", "RestoreStats", "generation_of", "read_partition"]

log = logging.getLogger(__name__)

GENERATION_HEADER = "generation"
FETCH_WAIT_MS = 200  # one getmany round; the loop ends on position, not on an empty fetch

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """What one restore read: for metrics and /readyz ("restore progress")."""

    shard: int
    records: int  # records read from the partition (before folding)
    keys: int  # live keys restored
    skipped_stale: int  # records ignored for an older generation header
    end_offset: int  # the last stable offset the restore read up to
    generation: int  # the newest generation header seen
    seconds: float
    kept: bool = False  # nothing written since our own last write: the held state was kept


def generation_of(headers: Headers) -> int:
    """The owner generation stamped on a state record; 0 when absent or unreadable."""
    for name, value in headers:
        if name == GENERATION_HEADER:
            try:
                return int(value)
            except ValueError:
                log.warning("state record has an unreadable generation header %r", value)
                return 0
    return 0


@dataclass(slots=True)
class Fold:
    """Latest value per key of a state partition, read in offset order.

    A record whose generation is older than the newest one already seen comes from a stale
    owner that wrote after a newer owner took over (the hole aiokafka's v0 transactions
    leave, see DESIGN.md): it is ignored. A tombstone (value None) removes the key.
    """

    values: dict[bytes, bytes] = field(default_factory=dict)
    generation: int = 0
    records: int = 0
    skipped_stale: int = 0

    def add(self, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        self.records += 1
        generation = generation_of(headers)
        if generation < self.generation:
            self.skipped_stale += 1
            return
        self.generation = generation
        if key is None:
            log.warning("state record without a key ignored")
        elif value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def add_all(self, records: Iterable[Any]) -> None:
        """Fold aiokafka ``ConsumerRecord`` objects (or anything with key, value, headers)."""
        for record in records:
            self.add(record.key, record.value, record.headers)


async def read_partition(
    options: Mapping[str, Any],
    topic: str,
    partition: int,
    *,
    stall_timeout_s: float,
    unless_end: int | None = None,
) -> tuple[Fold | None, RestoreStats]:
    """Read ``topic``/``partition`` from the beginning to its last stable offset, folded.

    ``options`` are the aiokafka client keywords (bootstrap, security, timeouts). The read
    fails with SinkUnavailable when the position stops moving for ``stall_timeout_s``.
    When the last stable offset equals ``unless_end`` (where our own last write ended),
    nothing was written since: no record is read and the fold is None (keep what you hold).
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **options,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    tp = TopicPartition(topic, partition)
    try:
        async with asyncio.timeout(stall_timeout_s):
            await consumer.start()
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            # read_committed: ListOffsets answers the last stable offset, not the high watermark
            end = (await consumer.end_offsets([tp]))[tp]
        fold = None if end == unless_end else await _read_to(consumer, tp, end, stall_timeout_s)
    except TimeoutError as exc:
        raise SinkUnavailable(
            f"restore of {topic}[{partition}] made no progress for {stall_timeout_s:g}s",
            shard=partition,
            topic=topic,
        ) from exc
    except KafkaError as exc:
        raise SinkError(
            f"restore of {topic}[{partition}] failed: {exc}", shard=partition, topic=topic
        ) from exc
    finally:
        await consumer.stop()
    stats = RestoreStats(
        shard=partition,
        records=fold.records if fold else 0,
        keys=len(fold.values) if fold else 0,
        skipped_stale=fold.skipped_stale if fold else 0,
        end_offset=end,
        generation=fold.generation if fold else 0,
        seconds=time.monotonic() - started,
        kept=fold is None,
    )
    return fold, stats


async def _read_to(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, stall_timeout_s: float
) -> Fold:
    # The position, not "an empty fetch", ends the loop: aiokafka moves the position past
    # control batches (commit/abort markers) and aborted batches without returning a record
    # (fetcher.PartitionRecords._unpack_records, FetchResult.getall), so a partition whose
    # last entry is a transaction marker still reaches `end`.
    fold = Fold()
    position = await consumer.position(tp)
    while position < end:
        async with asyncio.timeout(stall_timeout_s):
            while (moved := await _step(consumer, tp, fold)) == position:
                pass
        position = moved
    return fold


async def _step(consumer: AIOKafkaConsumer, tp: TopicPartition, fold: Fold) -> int:
    batches = await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS)
    fold.add_all(batches.get(tp, ()))
    return int(await consumer.position(tp))
