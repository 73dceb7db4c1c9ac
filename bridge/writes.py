"""Writing what poll cycles saw: batches, watermarks, and the state that moves after each.

A cycle's changes go out in batches under its shard's lock (one Kafka transaction each with
the exactly-once sink): as its detail calls find them (``write_due``, once the oldest has
waited ``flush_after_s``) and, last, with the cycle's watermark (``commit``). The in-memory
state of a batch's jobs moves only after its write returns; after a failed write the cycle
writes nothing more, and its next poll derives the same events with the same ids again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from bridge import events
from bridge.diff import ChangeKind
from bridge.filters import JobFilter
from bridge.memory import Trimmer
from bridge.metrics import Metrics
from bridge.shard import ShardRunner
from bridge.tracking import Cycle, DeadKey, ProjectState, Seen, batch, chunks, utc

__all__ = ["MAX_BATCH_JOBS", "CycleWriter"]

log = logging.getLogger(__name__)

# A cycle's changes go out in batches of at most this many jobs: a first sweep of a big
# project must not become one giant transaction.
MAX_BATCH_JOBS = 500

Marks = dict[str, tuple[events.OutRecord, float]]  # project -> its watermark record, through


class CycleWriter:
    """Writes the cycles of one scheduler: their batches, the shards' waiting watermarks, and
    the events, commit and watermark metrics."""

    def __init__(
        self,
        *,
        mode: str,
        flush_after_s: float,
        event_options: events.EventOptions,
        job_filter: JobFilter,
        metrics: Metrics,
        trimmer: Trimmer,
        clock: Callable[[], float],
    ) -> None:
        self._mode = mode
        self._flush_after_s = flush_after_s
        self._event_options = event_options
        self._filter = job_filter
        self._metrics = metrics
        self._trimmer = trimmer
        self._clock = clock

    def __repr__(self) -> str:
        return f"<CycleWriter {self._mode} flush_after={self._flush_after_s:g} s>"

    async def write_due(self, runner: ShardRunner, cycle: Cycle) -> None:
        """Mid-cycle: write the changes found so far once the oldest has waited
        ``flush_after_s`` for the cycle's other calls, or a full batch has gathered.

        A big project's cycle takes as long as its detail calls (2,000 jobs at 20 calls a
        second: 100 s); a change found in its first second must not wait for the last. One
        such write at a time per cycle: what is found meanwhile goes in the next. Each write
        is a batch like the cycle's last (its own transaction under exactly-once) without
        the watermark, which stays in the last.

        Not while the project is being discovered: a first sweep is written whole, at its
        end, so a shard handed over during it restores none of it and its next owner
        discovers the project afresh. (A process killed between a big sweep's last batches
        still leaves part of it; ``ProjectState.discovers`` tells the rest by create_time.)
        """
        if cycle.writing or cycle.write_failed or cycle.project.discovering:
            return
        cycle.writing = True
        try:
            while piece := cycle.seen[cycle.written : cycle.written + MAX_BATCH_JOBS]:
                waited = self._clock() - piece[0].observed_at
                if len(piece) < MAX_BATCH_JOBS and waited < self._flush_after_s:
                    return
                if not await self._write(runner, cycle, piece, [], {}):
                    return
        finally:
            cycle.writing = False

    async def commit(self, runner: ShardRunner, cycle: Cycle, through: float | None) -> bool:
        """Write the rest of what the cycle saw, batch by batch; state moves after each
        write returns. False when any write of the cycle failed (none is tried after it).

        The watermark (``through``) rides in the last batch: a reader that sees it has seen
        every event of the cycle (one transaction under exactly-once). A quiet cycle (nothing
        but its watermark to write) pays no transaction of its own when its project's previous
        watermark is not still waiting: its watermark waits for the shard's next write, which
        carries every waiting watermark. If none comes, the project's next cycle writes: a
        watermark waits one interval at most, a project alone on its shard writes every other
        quiet cycle, and projects sharing a shard share its transactions while they are quiet
        (about one per shard per interval).
        """
        if cycle.write_failed:
            return False
        dead = list(cycle.dead.items())
        rest = cycle.seen[cycle.written :]
        quiet = not rest and not dead
        if through is not None and quiet and self._may_wait(runner, cycle.project):
            runner.marks[cycle.project.project_id] = (self._mark(cycle, through), through)
            return True
        pieces = list(chunks(rest, MAX_BATCH_JOBS))
        if not pieces and (dead or through is not None):
            pieces = [()]
        for index, piece in enumerate(pieces):
            carried = self._take_marks(runner, cycle, through) if index == len(pieces) - 1 else {}
            if not await self._write(runner, cycle, piece, dead, carried):
                return False
            dead = []
        return True

    async def _write(
        self,
        runner: ShardRunner,
        cycle: Cycle,
        piece: Sequence[Seen],
        dead: Sequence[tuple[DeadKey, events.OutRecord]],
        carried: Marks,
    ) -> bool:
        """One batch: ``piece`` (the next of ``cycle.seen`` not written), dead letters and
        the watermarks ``carried``; the cycle's state moves when the write returns."""
        pid = cycle.project.project_id
        for seen in piece:  # requested snapshots are always published
            kind = seen.change.kind
            seen.publish = kind is ChangeKind.SNAPSHOT or self._filter.publishes(kind)
        records = batch(
            cycle.project,
            piece,
            [record for _, record in dead],
            options=self._event_options,
            generation=runner.stamp,
        )
        if carried:
            marks = [record for record, _ in carried.values()]
            records = dataclasses.replace(records, watermarks=marks)
        if not await runner.write(cycle.epoch, records):
            self._metrics.transactions.labels("failed").inc()
            cycle.write_failed = True
            carried.pop(pid, None)
            if runner.epoch == cycle.epoch:  # still true: the next write carries them
                runner.marks = carried | runner.marks
            return False
        self._metrics.transactions.labels("committed").inc()
        runner.has_written = True
        self._trimmer.after_write(len(piece))
        cycle.project.commit(piece, [key for key, _ in dead])
        cycle.written += len(piece)
        self._count_commit(piece, [cycle.dead_reasons[key] for key, _ in dead])
        for project_id, (_, marked) in carried.items():
            if project_id != pid:  # the cycle's own: note_watermark, after the commit
                self._advance_watermark(runner.projects[project_id], marked)
        return True

    def _take_marks(self, runner: ShardRunner, cycle: Cycle, through: float | None) -> Marks:
        """The watermarks the cycle's last write carries: the shard's waiting ones, and the
        cycle's own (which replaces its project's waiting one)."""
        carried, runner.marks = runner.marks, {}
        if through is not None:
            carried[cycle.project.project_id] = (self._mark(cycle, through), through)
        return carried

    @staticmethod
    def _may_wait(runner: ShardRunner, project: ProjectState) -> bool:
        """Whether a quiet cycle's watermark may wait for the shard's next write: not when
        the project's previous one is still waiting (so none waits longer than one interval),
        nor before the shard's first write, nor while the project's watermark is stalled (the
        first complete cycle says so at once)."""
        if not runner.has_written or project.stalled_since is not None:
            return False
        return project.project_id not in runner.marks

    def _mark(self, cycle: Cycle, through: float) -> events.OutRecord:
        return events.watermark(
            project_id=cycle.project.project_id,
            observed_through=utc(through),
            jobs=len(cycle.present or ()),
            mode=self._mode,
        )

    def _advance_watermark(self, project: ProjectState, through: float) -> None:
        """A write carrying the project's watermark ``through`` returned."""
        pid = project.project_id
        project.watermark_at = max(project.watermark_at, through)
        self._metrics.watermark.labels(pid).set(project.watermark_at)
        if project.stalled_since is not None:
            log.info("project %s: watermark advancing again (%s)", pid, utc(through))
            project.stalled_since = None
            self._metrics.watermark_stalled_since.labels(pid).set(0)

    def note_watermark(self, cycle: Cycle, through: float | None, *, waiting: bool) -> None:
        """Advance the project's watermark, or note (once) since when it is stalled."""
        project, pid = cycle.project, cycle.project.project_id
        if through is not None:
            if not waiting:
                self._advance_watermark(project, through)
            return
        if project.stalled_since is not None:
            return
        project.stalled_since = self._clock()
        self._metrics.watermark_stalled_since.labels(pid).set(project.stalled_since)
        if cycle.present is None:
            why = "list sweep incomplete (throttled, breaker open, auth or API failing)"
        elif cycle.failed:
            why = f"{cycle.failed} detail calls failed"
        else:
            why = "sink write failed"
        last = utc(project.watermark_at) if project.watermark_at else "never advanced"
        log.warning("project %s: watermark stalled at %s: %s", pid, last, why)

    def _count_commit(self, piece: Sequence[Seen], dead_letters: Sequence[str]) -> None:
        now = self._clock()
        for seen in piece:
            if not seen.publish:
                continue
            self._metrics.events.labels(seen.change.kind.value).inc()
            self._metrics.change_to_commit.observe(max(0.0, now - seen.observed_at))
        for reason in dead_letters:  # list_page, not_json, invalid
            self._metrics.dead_letters.labels(reason).inc()
