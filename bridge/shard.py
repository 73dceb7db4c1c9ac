"""One owned shard: its writer, its projects' restored state, the lock its writes take.

Under consumer-group membership a shard belongs to one generation of the group: every write
first asks ``still_ours()`` (the assignment is current), and a fenced producer ends the
shard — it is not reopened until a new assignment hands the shard to us again (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.errors import ProducerFencedError, SinkError
from bridge.events import OutRecord
from bridge.sink import Batch, ShardWriter, Sink, StillOurs
from bridge.tracking import ProjectState, restore

__all__ = ["Held", "OnFenced", "ShardRunner", "ShardStatus", "wait_stop"]

log = logging.getLogger(__name__)

# Reopening a shard after a sink failure backs off up to this long.
REOPEN_MAX_DELAY_S = 30.0

ShardStatus = Literal["restoring", "ready", "sink_down", "fenced", "stopped"]
OnFenced = Callable[[int, int], None]  # (shard, generation)


def _always() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Held:
    """What a cleanly stopped shard leaves behind for a rebalance that hands it straight back.

    ``state_end`` is the state partition's last stable offset after our last write: if the
    partition still ends there, nobody wrote since and ``projects`` is still the truth.
    """

    projects: dict[str, ProjectState]
    state_end: int
    stamp: int = 0


async def wait_stop(stop: asyncio.Event, deadline: float) -> bool:
    """Sleep until the loop time ``deadline``; False as soon as ``stop`` is set."""
    if stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await stop.wait()
    return not stop.is_set()


class ShardRunner:
    """One owned shard: its writer, its projects' state, the lock its writes take, readiness.

    ``ensure_open`` (re)opens the shard with backoff while its projects wait; ``write`` runs
    one batch unless the shard was reopened since the cycle began (``epoch``), in which case
    the batch is dropped: the restored state may already hold it, and the next cycle derives
    it again from that truth. ``stop`` ends its loops; ``closed`` is set once it is closed.
    """

    def __init__(
        self,
        shard: int,
        generation: int,
        project_ids: Sequence[str],
        sink: Sink,
        *,
        still_ours: StillOurs = _always,
        on_fenced: OnFenced | None = None,
        held: Held | None = None,
    ) -> None:
        self.shard = shard
        self.generation = generation
        self.project_ids = tuple(project_ids)
        self.projects = {p: ProjectState(p) for p in self.project_ids}
        self._held_end: int | None = None
        # The generation stamped on our state records: the group generation, unless the
        # partition already holds a newer stamp (see _stamp_after_open).
        self.stamp = generation
        self._held_stamp = 0
        if held is not None and set(held.projects) == set(self.project_ids):
            self.projects, self._held_end = held.projects, held.state_end
            self._held_stamp = held.stamp
        self.status: ShardStatus = "restoring"
        self.epoch = 0
        self.lock = asyncio.Lock()
        self.stop = asyncio.Event()
        self.closed = asyncio.Event()
        self._sink = sink
        self._writer: ShardWriter | None = None
        self._writer_at_close: ShardWriter | None = None
        self._failures = 0
        self._rng = random.Random()
        self._still_ours = still_ours
        self._on_fenced = on_fenced
        self.restore_records = 0
        # Watermarks of quiet cycles waiting to ride the shard's next write (project -> record
        # and its observed-through), see CycleWriter.commit (bridge.writes).
        self.marks: dict[str, tuple[OutRecord, float]] = {}
        self.has_written = False  # a write returned since the shard opened
        self.revoked = False  # set by a revoke: cycles in flight are cancelled, not awaited
        self.restore_seconds = 0.0

    def __repr__(self) -> str:
        jobs = sum(len(p.jobs) for p in self.projects.values())
        return (
            f"<ShardRunner {self.shard} gen={self.generation} {self.status} "
            f"projects={len(self.projects)} jobs={jobs}>"
        )

    def ready(self) -> bool:
        return self.status == "ready"

    def held(self) -> Held | None:
        """The state to keep after a clean stop (None: fenced, broken, or end unknown)."""
        writer = self._writer_at_close
        if writer is None or writer.state_end is None:
            return None
        return Held(self.projects, writer.state_end, self.stamp)

    async def ensure_open(self) -> bool:
        """Wait until the shard is open and restored; False when told to stop first."""
        if self.ready():
            return True
        loop = asyncio.get_running_loop()
        async with self.lock:
            while not self.ready() and not self.stop.is_set():
                if await self._try_open():
                    break
                delay = min(REOPEN_MAX_DELAY_S, 0.25 * 2 ** min(self._failures, 8))
                await wait_stop(self.stop, loop.time() + delay * self._rng.uniform(0.5, 1.0))
        return self.ready()

    async def _try_open(self) -> bool:
        if self._writer is not None:
            self._writer = None
            self._held_end = None  # a broken writer: whatever we hold, restore
            await self._close_quietly()
        started = time.monotonic()
        try:
            writer, restored = await self._sink.open_shard(
                self.shard, self.generation, still_ours=self._still_ours, known_end=self._held_end
            )
        except ProducerFencedError as exc:
            self._fence(exc)
            return False
        except SinkError as exc:
            self._failures += 1
            log.warning("shard %d: open failed (%r), retry %d", self.shard, exc, self._failures)
            return False
        ignored, kept = 0, restored is None
        self.stamp = self._stamp_after_open(max(writer.newest_generation, self._held_stamp))
        if restored is not None:
            self.projects, ignored = restore(self.projects, restored)
        self._writer, self._failures, self.status = writer, 0, "ready"
        self.epoch += 1
        self.marks.clear()  # they described the state before the reopen
        self.restore_seconds = time.monotonic() - started
        self.restore_records = 0 if restored is None else len(restored)
        log.info(
            "shard %d open (generation %d): %s in %.2f s%s",
            self.shard,
            self.generation,
            "state kept, unchanged since our last write"
            if kept
            else f"{self.restore_records - ignored} jobs restored",
            self.restore_seconds,
            f" ({ignored} records of projects not watched here ignored)" if ignored else "",
        )
        return True

    def _stamp_after_open(self, newest: int) -> int:
        """The stamp for our state records, given the newest one already in the partition.

        Normally our group generation is the newest. A newer stamp while the group says the
        shard is ours (checked right after the producer fenced everyone else) means the
        group's generation count started again: Kafka deleted the group after every member
        had been gone longer than its offsets retention. Stamping on from the partition's
        newest keeps restore from ignoring everything we write from now on. A stale owner
        cannot get here: fencing and the ownership check before every write stop it.
        """
        if newest <= self.generation:
            return self.generation
        log.warning(
            "shard %d: the state partition holds generation %d, newer than the group's %d "
            "(the consumer group was recreated); stamping state records %d from now on",
            self.shard,
            newest,
            self.generation,
            newest + 1,
        )
        return newest + 1

    async def write(self, epoch: int, batch: Batch) -> bool:
        """Write ``batch`` if the shard is still the one the cycle started on."""
        async with self.lock:
            if epoch != self.epoch or not self.ready() or self._writer is None:
                return False
            if not self._still_ours():
                # revoked, reassigned, or our session expired: a write now is a stale owner's
                log.info("shard %d: no longer ours in generation %d", self.shard, self.generation)
                self.stop.set()
                return False
            try:
                await self._writer.write(batch)
            except ProducerFencedError as exc:
                self._fence(exc)
                return False
            except SinkError as exc:
                self.status = "sink_down"
                log.warning("shard %d: write failed (%r); pausing its projects", self.shard, exc)
                return False
            return True

    async def abandon(self, cycles: Sequence[asyncio.Task[None]]) -> None:
        """Cancel the shard's cycles once no write is under way (the lock is free)."""
        async with self.lock:
            for cycle in cycles:
                cycle.cancel()

    def _fence(self, exc: ProducerFencedError) -> None:
        """Fatal for this shard: stop it; only a new assignment brings it back (DESIGN.md)."""
        self.status = "fenced"
        self._held_end = None
        log.error(
            "shard %d generation %d: producer fenced or shard moved on (%s); stopping the shard",
            self.shard,
            self.generation,
            exc.message,
        )
        self.stop.set()
        if self._on_fenced is not None:
            self._on_fenced(self.shard, self.generation)

    async def close(self) -> None:
        if self.status == "ready":
            self._writer_at_close = self._writer
        if self.status != "fenced":
            self.status = "stopped"
        self._writer = None
        try:
            await self._close_quietly()
        finally:
            self.closed.set()

    async def _close_quietly(self) -> None:
        try:
            await self._sink.close_shard(self.shard)
        except SinkError as exc:
            log.warning("shard %d: close failed (%r)", self.shard, exc)
