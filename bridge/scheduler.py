"""Per-shard, per-project poll loops: tick → sweep → bounded fetch → diff → sink writes.

Each owned shard opens its writer and restores its state; then every project of the shard
gets its own loop, so one throttled, slow or broken project never holds up another. What a
cycle saw is written in batches (each a Kafka transaction with the exactly-once sink) under
the shard's lock, as its detail calls find it and, last, with the cycle's watermark
(``bridge.writes``); the in-memory state moves only after each write returns. A sink failure
closes and reopens the shard (its restored state is the truth about what committed) while its
projects pause, and the next cycle derives the same events with the same ids again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Literal, Protocol

import orjson

from bridge import events, sweep
from bridge.breaker import BreakerState
from bridge.client import EngineRow, check_row, parse_job_body
from bridge.diff import ChangeKind, JobChange
from bridge.errors import (
    ApiError,
    AuthError,
    CircuitOpen,
    JobNotFound,
    MalformedResponse,
    RateLimited,
)
from bridge.filters import FilterSettings, JobFilter
from bridge.memory import Trimmer
from bridge.metrics import Metrics
from bridge.models import JsonDict
from bridge.redact import RedactionSettings, Redactor, startup_warnings, with_derived_key
from bridge.settings import DEFAULT_FLUSH_AFTER_S, AuthSettings, Settings
from bridge.shard import Held, OnFenced, ShardRunner, ShardStatus, wait_stop
from bridge.sharding import shard_of
from bridge.signals import SnapshotRequest
from bridge.sink import Sink, StillOurs
from bridge.tracking import (
    Cycle,
    ProjectState,
    Seen,
    Tracked,
    detail_fingerprint,
    detail_view,
    fingerprint,
    quick_hash,
)
from bridge.writes import CycleWriter

__all__ = ["JobApi", "PollConfig", "Scheduler", "phase_of", "ticks"]

log = logging.getLogger(__name__)

Mode = Literal["detail", "list", "sweep"]

# Sweep mode never compares what a `show_detail=true` row lacks, so a snapshot taken from a
# detail call (a delete check, or state written in another mode) does not read as an update.
SWEEP_ONLY_DIFFER = sweep.DETAIL_ROW_LACKS


class JobApi(Protocol):
    """What the scheduler asks of DLI (``DliClient`` in production)."""

    def iter_rows(
        self, project_id: str, *, show_detail: bool = False
    ) -> AsyncIterator[list[EngineRow]]: ...

    async def get_job_body(self, project_id: str, job_id: int) -> bytes: ...

    async def count_jobs(self, project_id: str) -> int | None: ...

    def breaker_state(self, project_id: str) -> BreakerState: ...


@dataclass(frozen=True, slots=True)
class PollConfig:
    """The polling knobs the scheduler needs, taken once from Settings."""

    mode: Mode = "list"
    interval_s: float = 30.0
    transitional_interval_s: float = 5.0
    reconcile_interval_s: float = 600.0
    delete_after_misses: int = 1
    ignore: tuple[str, ...] = ("duration",)
    jitter_s: float = 1.0
    flush_after_s: float = DEFAULT_FLUSH_AFTER_S
    max_in_flight: int = 32
    per_project_in_flight: int = 8
    partitions: int = 12
    event_options: events.EventOptions = field(
        default_factory=lambda: events.EventOptions(region="local")
    )
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)

    @classmethod
    def from_settings(cls, settings: Settings, *, partitions: int | None = None) -> PollConfig:
        polling, api = settings.polling, settings.api
        ignore = tuple(polling.ignore_fields)
        if polling.mode == "sweep":
            ignore += tuple(f for f in SWEEP_ONLY_DIFFER if f not in ignore)
        return cls(
            mode=polling.mode,
            interval_s=polling.interval_s,
            transitional_interval_s=polling.transitional_interval_s,
            reconcile_interval_s=polling.reconcile_interval_s,
            delete_after_misses=polling.delete_after_misses,
            ignore=ignore,
            jitter_s=polling.jitter_s,
            flush_after_s=polling.flush_after_s,
            max_in_flight=api.max_in_flight,
            # A project may hold at most a quarter of the pool (and no more than its bucket's
            # burst): a project stuck behind Retry-After cannot starve the others.
            per_project_in_flight=max(1, min(api.project_burst, api.max_in_flight // 4)),
            partitions=partitions or settings.kafka.partitions,
            event_options=events.EventOptions(
                region=api.region,
                mode=settings.events.mode,
                snapshots=settings.events.snapshots,
                max_record_bytes=settings.kafka.max_record_bytes,
            ),
            redaction=with_derived_key(settings.redaction, _credential(settings.auth)),
            filters=settings.filters,
        )


def _credential(auth: AuthSettings) -> str | None:
    """The DLI secret the bridge holds (SK or IAM password), for the redaction key."""
    secret = auth.sk if auth.mode == "aksk" else auth.password if auth.mode == "token" else None
    return None if secret is None else secret.get_secret_value()


def _fingerprint_key(redaction: RedactionSettings) -> bytes:
    """Keyed fingerprints: from the redaction key, else random per process (costs one parse
    per job after a restart, and publishes nothing a reader could test guesses against)."""
    if redaction.hash_key is None:
        return os.urandom(32)
    secret = redaction.hash_key.get_secret_value().encode()
    return hashlib.sha256(b"dli-bridge/fingerprint/v1\0" + secret).digest()


# --- cadence ------------------------------------------------------------------------------------


async def ticks(
    period_s: float,
    jitter_s: float,
    stop: asyncio.Event,
    rng: random.Random,
    *,
    phase_s: float = 0.0,
) -> AsyncGenerator[float, None]:
    """Drift-free ticks until ``stop``: yields each tick's nominal loop time.

    The loop draws one offset in ``[0, jitter_s]`` when it starts and keeps it: the first tick
    is due at ``start + offset``, the n-th after it at ``start + phase_s + offset + n *
    period_s``, however long the work between ticks took; ticks missed by slow work are
    skipped, never bunched up. Loops given different phases and offsets spread their work
    over the period instead of all waking together, and the gap between two ticks is the
    period itself, never the period plus a jitter: a change waits at most one period.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    offset = rng.uniform(0.0, jitter_s)
    if not await wait_stop(stop, start + offset):
        return
    yield start
    grid = start + phase_s + offset
    n = max(1, math.ceil((loop.time() - grid) / period_s))
    while await wait_stop(stop, grid + n * period_s):
        yield grid + n * period_s
        n = max(n + 1, math.ceil((loop.time() - grid) / period_s))


def phase_of(project_id: str) -> float:
    """A project's fixed place in [0, 1) of the poll interval: the same on every instance."""
    digest = hashlib.blake2b(project_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2.0**64


def _api_outcome(exc: ApiError) -> str:
    for kind, name in (
        (JobNotFound, "not_found"),
        (MalformedResponse, "malformed"),
        (RateLimited, "rate_limited"),
        (CircuitOpen, "circuit_open"),
        (AuthError, "auth"),
    ):
        if isinstance(exc, kind):
            return name
    return "unavailable" if exc.retryable else "rejected"


# --- the scheduler -------------------------------------------------------------------------------


class _Knowns(Mapping[int, sweep.Known]):
    """The plan's view of the tracked jobs' ``Known`` records, without copying them out."""

    __slots__ = ("_jobs",)

    def __init__(self, jobs: Mapping[int, Tracked]) -> None:
        self._jobs = jobs

    def __getitem__(self, job_id: int) -> sweep.Known:
        return self._jobs[job_id].known

    def __iter__(self) -> Iterator[int]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)


class Scheduler:
    """Runs the owned shards and, inside each, one poll loop per project.

    ``run(shards)`` keeps going until ``stop()``: loops then finish the cycle they are in
    and leave, and each shard is closed. ``start_shard``/``stop_shard`` change what is owned
    while it runs (the consumer-group membership of the scale-out issue drives them).
    """

    def __init__(
        self,
        api: JobApi,
        sink: Sink,
        config: PollConfig,
        metrics: Metrics,
        projects: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._api = api
        self._sink = sink
        self._clock = clock
        self._rng = rng or random.Random()
        self._by_shard: dict[int, list[str]] = {}
        for pid in projects:
            self._by_shard.setdefault(shard_of(pid, config.partitions), []).append(pid)
        self._redactor = Redactor(config.redaction)
        self._fp_key = _fingerprint_key(config.redaction)
        self._filter = JobFilter(config.filters)
        self._watched = frozenset(projects)
        self._requests: dict[str, dict[str, SnapshotRequest]] = {}
        for warning in startup_warnings(config.redaction):
            log.warning("%s", warning)
        self._pool = asyncio.Semaphore(config.max_in_flight)
        # Projects in a cycle (sweep, detail calls, commit) at once: enough to keep the pool
        # busy, few enough that a first sweep of every project does not hold every job's
        # rows and fresh snapshots in memory at the same time.
        self._observing = asyncio.Semaphore(config.max_in_flight)
        self._api_calls = metrics.api_calls
        self._reconciled: dict[str, float] = {}  # project -> its last reconcile sweep (list mode)
        self._trimmer = Trimmer()  # after a first sweep or restore: freeze the state, trim the heap
        self._writes = CycleWriter(
            mode=config.mode,
            flush_after_s=config.flush_after_s,
            event_options=config.event_options,
            job_filter=self._filter,
            metrics=metrics,
            trimmer=self._trimmer,
            clock=clock,
        )
        self._runners: dict[int, ShardRunner] = {}
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        metrics.jobs_tracked.set_function(self.jobs_tracked)
        metrics.shards_owned.set_function(lambda: len(self._runners))

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self.config.mode} every {self.config.interval_s:g} s "
            f"shards={sorted(self._runners)} jobs={self.jobs_tracked()}>"
        )

    # --- ownership -------------------------------------------------------------------------

    async def run(self, shards: Iterable[int]) -> None:
        """Run ``shards`` (and any started later) until ``stop()``."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for shard in shards:
                self.start_shard(shard)
            await self._stop.wait()
            for runner in self._runners.values():
                runner.stop.set()
        self._group = None
        self._trimmer.cancel()

    def stop(self) -> None:
        """Start no new cycle; running ones finish and every shard closes."""
        if not self._stop.is_set():
            log.info("scheduler stopping: %d shards", len(self._runners))
        self._stop.set()

    def start_shard(
        self,
        shard: int,
        generation: int = 0,
        *,
        still_ours: StillOurs | None = None,
        on_fenced: OnFenced | None = None,
        held: Held | None = None,
    ) -> ShardRunner:
        """Run ``shard`` (membership passes its ownership check, fencing callback and any
        state held from a previous assignment); an already running shard is returned as is."""
        if self._group is None:
            raise RuntimeError("start_shard() needs a running scheduler")
        if shard in self._runners:
            return self._runners[shard]
        runner = ShardRunner(
            shard,
            generation,
            self._by_shard.get(shard, ()),
            self._sink,
            still_ours=still_ours or (lambda: True),
            on_fenced=on_fenced,
            held=held,
        )
        self._runners[shard] = runner
        self._group.create_task(self._run_shard(runner), name=f"shard-{shard}")
        return runner

    @property
    def running(self) -> bool:
        """Between ``run()`` starting and ``stop()``: shards can be started."""
        return self._group is not None and not self._stop.is_set()

    async def stop_shard(self, shard: int, *, revoke: bool = False) -> ShardRunner | None:
        """Stop polling ``shard``; returns (the closed runner) once its cycles ended.

        ``revoke``: the shard is no longer ours, so its in-flight cycles could not write
        anyway: they are cancelled (after any write under way) instead of awaited.
        """
        runner = self._runners.get(shard)
        if runner is None:
            return None
        runner.revoked = runner.revoked or revoke
        runner.stop.set()
        await runner.closed.wait()
        return runner

    def set_projects(self, projects: Iterable[str]) -> set[int]:
        """Watch ``projects`` from now on; returns the shards whose projects changed.

        A running shard keeps polling its old projects until it is stopped and started
        again (``App`` does that); a shard started later gets the new list.
        """
        watched = frozenset(projects)
        by_shard: dict[int, list[str]] = {}
        for pid in sorted(watched):
            by_shard.setdefault(shard_of(pid, self.config.partitions), []).append(pid)
        old = {shard: sorted(pids) for shard, pids in self._by_shard.items()}
        changed = {s for s in old.keys() | by_shard.keys() if old.get(s) != by_shard.get(s)}
        self._by_shard, self._watched = by_shard, watched
        return changed

    def shard_status(self) -> dict[int, ShardStatus]:
        return {shard: runner.status for shard, runner in self._runners.items()}

    def request_snapshot(self, request: SnapshotRequest) -> bool:
        """Queue a re-snapshot; answered by the next complete poll while its shard is owned
        here (an instance that does not own it keeps it for a later assignment)."""
        if request.project_id not in self._watched:
            return False
        pending = self._requests.setdefault(request.project_id, {})
        if request.request_id not in pending:
            log.info("project %s: re-snapshot %s requested", request.project_id, request)
            pending[request.request_id] = request
        return True

    def jobs_tracked(self) -> int:
        return sum(len(p.jobs) for r in self._runners.values() for p in r.projects.values())

    async def _run_shard(self, runner: ShardRunner) -> None:
        try:
            if not await runner.ensure_open():
                return
            self._trimmer.after_write(runner.restore_records)  # a large state just arrived
            async with asyncio.TaskGroup() as group:
                loops = [
                    group.create_task(self._run_project(runner, pid), name=f"project-{pid}")
                    for pid in runner.project_ids
                ]
                await runner.stop.wait()
                if runner.revoked:
                    await runner.abandon(loops)
        finally:
            await runner.close()
            del self._runners[runner.shard]
            log.info("shard %d closed", runner.shard)

    # --- one project -----------------------------------------------------------------------

    async def _run_project(self, runner: ShardRunner, project_id: str) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        fast = min(cfg.transitional_interval_s, cfg.interval_s)
        phase = phase_of(project_id) * cfg.interval_s
        beats = ticks(cfg.interval_s, cfg.jitter_s, runner.stop, self._rng, phase_s=phase)
        async with contextlib.aclosing(beats):
            async for nominal in beats:
                await self._poll(runner, project_id, full=True)
                next_due = nominal + cfg.interval_s
                # Between sweeps, jobs that moved into a transitional status get their own
                # faster polls (not in sweep mode: there only a delete is ever confirmed with
                # a detail call); a project whose transitional jobs all sat there longer than
                # the fast lane lasts waits for its next sweep.
                while (
                    cfg.mode != "sweep"
                    and self._fast_lane(runner.projects[project_id])
                    and loop.time() + fast < next_due
                ):
                    if not await wait_stop(runner.stop, loop.time() + fast):
                        return
                    await self._poll(runner, project_id, full=False)

    def _fast_lane(self, project: ProjectState) -> bool:
        """Whether a job of the project is in the fast lane (see ``sweep.in_fast_lane``)."""
        now, jobs = self._clock(), project.jobs
        return any(
            sweep.in_fast_lane(jobs[j].known, now, self.config.transitional_interval_s)
            for j in project.transitional
            if j in jobs
        )

    async def _poll(self, runner: ShardRunner, project_id: str, *, full: bool) -> None:
        if not await runner.ensure_open():
            return
        project = runner.projects[project_id]
        cycle = Cycle(project, runner.epoch, self.config.ignore, self._redactor, self._fp_key)
        try:
            outcome = await self._cycle(runner, cycle, full=full)
        except Exception:
            # A bug must cost one project one cycle, never the process.
            log.exception("project %s: poll cycle failed", project_id)
            outcome = "error"
        self.metrics.polls.labels(self.config.mode, outcome).inc()
        self._watch_breaker(project)

    async def _cycle(self, runner: ShardRunner, cycle: Cycle, *, full: bool) -> str:
        async with self._observing:  # until committed: what a cycle holds is bounded
            answered = await self._observe(runner, cycle, full=full)
            through = cycle.observed_through() if full else None
            committed = await self._writes.commit(runner, cycle, through)
        if full:
            pid = cycle.project.project_id
            if through is None or not committed:
                runner.marks.pop(pid, None)  # stalled: no later write may say it advanced
            waiting = committed and pid in runner.marks
            self._writes.note_watermark(cycle, through if committed else None, waiting=waiting)
        if not committed:
            return "aborted"
        for request in answered:
            log.info("project %s: re-snapshot %s answered", request.project_id, request.request_id)
            self._requests.get(request.project_id, {}).pop(request.request_id, None)
        if cycle.rows is not None:
            cycle.project.note_sweep(cycle.rows)
        return "incomplete" if full and cycle.present is None else "ok"

    async def _observe(
        self, runner: ShardRunner, cycle: Cycle, *, full: bool
    ) -> list[SnapshotRequest]:
        """Sweep, decide, fetch and judge; the re-snapshot requests this cycle answers."""
        if full:
            cycle.started = self._clock()
            if cycle.project.swept_from is None:
                cycle.project.swept_from = cycle.started
            cycle.reconcile = self._reconcile_due(cycle.project.project_id, cycle.started)
            counted = await self._count(cycle)
            cycle.counted = counted is True
            if counted is False:
                cycle.rows = self._filtered(cycle.project, await self._sweep(cycle))
            if cycle.reconcile and cycle.rows is not None:
                self._reconciled[cycle.project.project_id] = cycle.started
        fetch, confirm = self._decide(cycle, full=full)
        requests = list(self._requests.get(cycle.project.project_id, {}).values())
        if full and requests and cycle.rows is not None and self.config.mode == "list":
            # a light row does not show config: a snapshot must be fresh, so fetch every target
            fetch += sorted(set(self._targets(cycle, requests)) - set(fetch))
        if cycle.rows is not None and self.config.mode == "sweep":
            self._judge_rows(cycle)
        await self._fetch_all(runner, cycle, fetch, confirm)
        if cycle.counted and (cycle.failed or cycle.doubted):
            await self._list_instead(runner, cycle)
        return self._answer(cycle, requests) if full else []

    # --- sweep and decisions ---------------------------------------------------------------

    async def _sweep(self, cycle: Cycle) -> dict[int, JsonDict] | None:
        """Every row of the project, or None when the sweep did not complete."""
        pid = cycle.project.project_id
        rows: dict[int, JsonDict] = {}
        started = time.perf_counter()
        show_detail = self.config.mode == "sweep" or cycle.reconcile
        try:
            async for page in self._api.iter_rows(pid, show_detail=show_detail):
                self._api_done("list", "ok", started)
                started = time.perf_counter()
                rows.update(page)
        except ApiError as exc:
            self._sweep_failed(cycle, exc, started)
            return None
        self._swept(cycle)
        return rows

    async def _count(self, cycle: Cycle) -> bool | None:
        """Detail mode: whether the project's job count equals the jobs we know, so that the
        list need not be read (one request for one row instead of a page per 100 jobs); None
        when the count failed, which fails the cycle's sweep as a failed list would (the list
        is not tried too: a throttled or failing API would pay every retry twice).

        Every known job gets its detail call anyway; if each answers, the count proves no job
        came or went (see ``Cycle.present``). Not while the project is still discovered, nor
        while it has parked jobs (they get no detail call to prove them there).
        """
        project = cycle.project
        if self.config.mode != "detail" or project.discovering or project.parked:
            return False
        if len(project.jobs) < 2:  # a count of one row cannot tell "every match" from "page"
            return False
        started = time.perf_counter()
        try:
            total = await self._api.count_jobs(project.project_id)
        except ApiError as exc:
            self._sweep_failed(cycle, exc, started)
            return None
        self._api_done("list", "ok", started)
        if total != len(project.jobs):
            return False
        self._swept(cycle)
        return True

    async def _list_instead(self, runner: ShardRunner, cycle: Cycle) -> None:
        """A counted cycle some detail call put in doubt (no such job, refused, no answer): the
        list is read after all, and the jobs it shows that we did not know are fetched."""
        cycle.counted = False
        cycle.rows = self._filtered(cycle.project, await self._sweep(cycle))
        if cycle.rows is None:
            return
        fetch, confirm = self._decide(cycle, full=True)
        fresh = [j for j in fetch if j not in cycle.project.jobs or j in confirm]
        await self._fetch_all(runner, cycle, fresh, confirm)

    def _sweep_failed(self, cycle: Cycle, exc: ApiError, started: float) -> None:
        self._api_done("list", _api_outcome(exc), started)
        if isinstance(exc, MalformedResponse):
            cycle.dead_letter(None, exc, self._clock())
        self._sweep_state(cycle.project, exc)

    def _swept(self, cycle: Cycle) -> None:
        self._sweep_state(cycle.project, None)
        self.metrics.last_sweep.labels(cycle.project.project_id).set(self._clock())

    def _sweep_state(self, project: ProjectState, error: ApiError | None) -> None:
        failing = error is not None
        if failing != project.sweep_failing:
            project.sweep_failing = failing
            if failing:
                log.warning("project %s: list sweep failing (%r)", project.project_id, error)
            else:
                log.info("project %s: list sweep complete again", project.project_id)

    def _filtered(
        self, project: ProjectState, rows: dict[int, JsonDict] | None
    ) -> dict[int, JsonDict] | None:
        """The rows inside the filters (decided from the light row: no detail call needed)."""
        if rows is None:
            return None
        pid = project.project_id
        accepted = {j: raw for j, raw in rows.items() if self._filter.accepts_row(pid, raw)}
        project.park(accepted, (j for j in rows if j not in accepted))
        return accepted

    def _decide(self, cycle: Cycle, *, full: bool) -> tuple[list[int], frozenset[int]]:
        """Which jobs get a detail call this cycle, and which of them are delete checks."""
        cfg, project, present = self.config, cycle.project, cycle.present
        rows: list[sweep.Row] | None = None
        if cycle.rows is not None and cycle.reconcile:
            rows = [self._reconcile_row(cycle, jid, raw) for jid, raw in cycle.rows.items()]
        elif present is not None and cfg.mode == "detail":
            rows = []  # every job is fetched: the plan only counts the missing ones
        elif cycle.rows is not None:
            rows = self._light_rows(cycle, cycle.rows)
        watched = project.watched()
        if not full:  # between sweeps only jobs in a transitional status are looked at
            watched = {j: watched[j] for j in project.transitional if j in watched}
        plan = sweep.plan(
            _Knowns(watched),
            rows,
            now=self._clock(),
            reconcile_interval_s=None,  # list mode reconciles a project at a time
            transitional_interval_s=cfg.transitional_interval_s,
            delete_after_misses=cfg.delete_after_misses,
            present=present,
        )
        if present is not None:
            self._count_misses(project, present, plan.missing)
        confirm = frozenset(plan.confirm_delete)
        if not full:
            fetch = [j for j, why in plan.fetch.items() if why is sweep.Reason.TRANSITIONAL]
        elif cfg.mode == "list":
            fetch = list(plan.fetch)
        elif cfg.mode == "sweep":
            fetch = list(confirm)
        else:  # detail: every job, every interval
            fetch = sorted(set(project.watched()) | set(cycle.rows or ()))
        return fetch, confirm

    def _reconcile_due(self, project_id: str, now: float) -> bool:
        """List mode: whether this sweep lists with ``show_detail=true`` to reconcile.

        A light row does not show config edits; a detail row does, for one request per 100
        jobs instead of a detail call per job. Each project reconciles once per
        ``reconcile_interval_s``, at its own phase (the first one within the first interval).
        """
        if self.config.mode != "list":
            return False
        every = self.config.reconcile_interval_s
        last = self._reconciled.setdefault(project_id, now - (1.0 - phase_of(project_id)) * every)
        return now - last >= every

    def _light_rows(self, cycle: Cycle, listed: Mapping[int, JsonDict]) -> list[sweep.Row]:
        """The light rows the plan must look at: the quiet ones (most) are left out. The rows
        are inside the filters, so none of their jobs is parked (``_filtered`` unparked them)."""
        jobs = cycle.project.jobs
        rows = []
        for job_id, raw in listed.items():
            fp, status = self._row_fp(cycle, job_id, raw), raw.get("status")
            tracked = jobs.get(job_id)
            known = None if tracked is None else tracked.known
            if not sweep.quiet(known, fp, status):
                rows.append(sweep.Row(job_id, fp, status))
        return rows

    def _reconcile_row(self, cycle: Cycle, job_id: int, raw: JsonDict) -> sweep.Row:
        """A show_detail row against the job's last detail: the same means freshly observed
        (no detail call); different means a detail call.

        A job restored from state has no detail fingerprint yet (it is not in state records):
        its row is compared, redacted, with its remembered snapshot instead, so a shard taken
        over does not cost a detail call per job at its first reconcile.
        """
        tracked = cycle.project.jobs.get(job_id)
        if tracked is None:
            return sweep.Row(job_id, b"", raw.get("status"), same=False)  # new: fetched
        known = tracked.known
        fp = detail_fingerprint(raw, cycle.ignore, self._fp_key)
        if known.detail_fp is None:
            remembered = detail_view(cycle.remembered(tracked), cycle.ignore)
            if detail_view(cycle.redact(raw), cycle.ignore) == remembered:
                known.detail_fp = fp
        same = known.detail_fp == fp
        if same:
            tracked.touch(None, self._clock())
        return sweep.Row(job_id, b"", raw.get("status"), same=same)

    def _row_fp(self, cycle: Cycle, job_id: int, raw: JsonDict) -> bytes:
        if self.config.mode == "list":
            fp = sweep.row_fingerprint(raw, self.config.ignore, self._fp_key)
        else:
            fp = fingerprint(orjson.dumps(raw), self._fp_key)
        cycle.row_fps[job_id] = fp
        return fp

    @staticmethod
    def _count_misses(
        project: ProjectState, rows: Mapping[int, object], missing: Iterable[int]
    ) -> None:
        for job_id in missing:
            project.jobs[job_id].known.misses += 1
        for job_id in rows:
            tracked = project.jobs.get(job_id)
            if tracked is not None:
                tracked.known.misses = 0

    # --- observing jobs --------------------------------------------------------------------

    def _judge_rows(self, cycle: Cycle) -> None:
        """Sweep mode: each show_detail row is the job's snapshot (validated whole first,
        when it differs from what we have: the sweep read it only as far as ``JobRow``)."""
        observed = self._clock()
        pid = cycle.project.project_id
        for job_id, raw in (cycle.rows or {}).items():
            fp = cycle.row_fps[job_id]
            if cycle.unchanged(job_id, fp, observed):
                continue
            try:
                check_row(raw, project_id=pid, job_id=job_id)
            except MalformedResponse as exc:
                cycle.dead_letter(job_id, exc, observed)
                continue
            cycle.judge(job_id, raw, fp, observed)

    async def _fetch_all(
        self,
        runner: ShardRunner,
        cycle: Cycle,
        job_ids: Sequence[int],
        confirm: frozenset[int],
    ) -> None:
        """Detail calls through the shared pool, at most a project's share at once; what they
        find is written as it comes due (``CycleWriter.write_due``), not only when the last
        returns."""
        if not job_ids:
            return
        pending = iter(job_ids)

        async def worker() -> None:
            for job_id in pending:
                async with self._pool:
                    await self._fetch_one(cycle, job_id, job_id in confirm)
                if cycle.written < len(cycle.seen):  # (most calls find nothing new)
                    await self._writes.write_due(runner, cycle)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.config.per_project_in_flight, len(job_ids))):
                group.create_task(worker())

    async def _fetch_one(self, cycle: Cycle, job_id: int, confirm_delete: bool) -> None:
        pid = cycle.project.project_id
        started = time.perf_counter()
        try:
            body = await self._api.get_job_body(pid, job_id)
        except JobNotFound:
            self._api_done("detail", "not_found", started)
            if confirm_delete:
                cycle.deleted(job_id, self._clock())
            else:  # listed (or counted) a moment ago: a list confirms it
                cycle.doubted += 1
            return
        except ApiError as exc:
            self._api_done("detail", _api_outcome(exc), started)
            log.debug("project %s job %d: detail failed (%r)", pid, job_id, exc)
            cycle.failed += 1
            return
        self._api_done("detail", "ok", started)
        self._judge_body(cycle, job_id, body, self._clock())

    @staticmethod
    def _judge_body(cycle: Cycle, job_id: int, body: bytes, observed: float) -> None:
        quick = quick_hash(body)
        if cycle.same_body(job_id, quick, observed):
            return
        fp = fingerprint(body, cycle.fp_key)
        if cycle.unchanged(job_id, fp, observed, quick):
            return
        pid = cycle.project.project_id
        try:
            raw = parse_job_body(body, project_id=pid, job_id=job_id).raw
        except MalformedResponse as exc:
            cycle.dead_letter(job_id, exc, observed)
            return
        except ApiError as exc:  # is_success false in a 2xx answer
            log.info("project %s job %d: detail refused (%r)", pid, job_id, exc)
            cycle.doubted += 1  # it may be gone: a count cannot vouch for the project now
            return
        cycle.judge(job_id, raw, fp, observed)

    # --- re-snapshot ----------------------------------------------------------------------

    @staticmethod
    def _targets(cycle: Cycle, requests: Sequence[SnapshotRequest]) -> list[int]:
        """Live jobs inside the filters that some request asks for."""
        rows = cycle.present or {}
        wanted = {r.job_id for r in requests}
        return [j for j in rows if None in wanted or j in wanted]

    def _answer(self, cycle: Cycle, requests: Sequence[SnapshotRequest]) -> list[SnapshotRequest]:
        """Append one snapshot per target job not yet answered; the requests now answered.

        Only a complete, fully answered poll answers: a snapshot must be the job's state now.
        """
        if not requests or cycle.present is None or cycle.failed:
            return []
        latest = {s.job_id: s for s in cycle.seen}
        observed = self._clock()
        for request in requests:
            for job_id in self._targets(cycle, [request]):
                self._snapshot(cycle, job_id, latest.get(job_id), request, observed)
        return list(requests)

    @staticmethod
    def _snapshot(
        cycle: Cycle, job_id: int, seen: Seen | None, request: SnapshotRequest, observed: float
    ) -> None:
        tracked = cycle.project.jobs.get(job_id)
        if tracked is not None and request.request_id in tracked.answered:
            return  # answered before (by this instance or the shard's previous owner)
        if seen is not None and seen.snapshot is not None:
            snapshot, fp, row_fp = seen.snapshot, seen.fingerprint, seen.row_fp
        elif tracked is not None and seen is None:
            snapshot, fp, row_fp = tracked.snapshot, tracked.fingerprint, None
        else:
            return  # not known yet (detail failed) or deleted: nothing to show
        doc = orjson.loads(snapshot)
        status = doc.get("status")
        change = JobChange(ChangeKind.SNAPSHOT, (), (), status, status, None, doc)
        cycle.seen.append(Seen.of(job_id, change, fp, row_fp, observed, answers=request.request_id))

    # --- bookkeeping -----------------------------------------------------------------------

    def _api_done(self, endpoint: str, outcome: str, started: float) -> None:
        self._api_calls.done(endpoint, outcome, time.perf_counter() - started)
        if outcome == "rate_limited":
            self.metrics.rate_limited.inc()

    def _watch_breaker(self, project: ProjectState) -> None:
        state = self._api.breaker_state(project.project_id)
        if state is project.last_breaker:
            return
        log.warning("project %s: breaker %s -> %s", project.project_id, project.last_breaker, state)
        project.last_breaker = state
        self.metrics.breaker_open.labels(project.project_id).set(
            0 if state is BreakerState.CLOSED else 1
        )
