"""One owned shard: its writer, its projects' restored state, the lock its writes take."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Literal

from bridge.errors import ProducerFencedError, SinkError
from bridge.sink import Batch, ShardWriter, Sink
from bridge.tracking import ProjectState, restore

__all__ = ["ShardRunner", "ShardStatus", "wait_stop"]

log = logging.getLogger(__name__)

# Reopening a shard after a sink failure backs off up to this long.
REOPEN_MAX_DELAY_S = 30.0

ShardStatus = Literal["restoring", "ready", "sink_down", "stopped"]


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

    def __init__(self, shard: int, generation: int, project_ids: Sequence[str], sink: Sink) -> None:
        self.shard = shard
        self.generation = generation
        self.project_ids = tuple(project_ids)
        self.projects = {p: ProjectState(p) for p in self.project_ids}
        self.status: ShardStatus = "restoring"
        self.epoch = 0
        self.lock = asyncio.Lock()
        self.stop = asyncio.Event()
        self.closed = asyncio.Event()
        self._sink = sink
        self._writer: ShardWriter | None = None
        self._failures = 0
        self._rng = random.Random()

    def __repr__(self) -> str:
        jobs = sum(len(p.jobs) for p in self.projects.values())
        return (
            f"<ShardRunner {self.shard} gen={self.generation} {self.status} "
            f"projects={len(self.projects)} jobs={jobs}>"
        )

    def ready(self) -> bool:
        return self.status == "ready"

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
            await self._close_quietly()
        started = time.monotonic()
        try:
            writer, restored = await self._sink.open_shard(self.shard, self.generation)
        except SinkError as exc:
            self._failures += 1
            log.warning("shard %d: open failed (%r), retry %d", self.shard, exc, self._failures)
            return False
        self.projects, ignored = restore(self.projects, restored)
        self._writer, self._failures, self.status = writer, 0, "ready"
        self.epoch += 1
        log.info(
            "shard %d open: %d jobs restored in %.2f s%s",
            self.shard,
            len(restored) - ignored,
            time.monotonic() - started,
            f" ({ignored} records of projects not watched here ignored)" if ignored else "",
        )
        return True

    async def write(self, epoch: int, batch: Batch) -> bool:
        """Write ``batch`` if the shard is still the one the cycle started on."""
        async with self.lock:
            if epoch != self.epoch or not self.ready() or self._writer is None:
                return False
            try:
                await self._writer.write(batch)
            except SinkError as exc:
                self._fail(exc)
                return False
            return True

    def _fail(self, exc: SinkError) -> None:
        self.status = "sink_down"
        if isinstance(exc, ProducerFencedError):
            # Static ownership (one instance owns every shard): reopening fences the other
            # writer in turn. Under consumer-group membership the owner stops the shard.
            log.error("shard %d: producer fenced (%r); reopening", self.shard, exc)
        else:
            log.warning("shard %d: write failed (%r); pausing its projects", self.shard, exc)

    async def close(self) -> None:
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
