"""Per-shard, per-project poll loops: tick → sweep → bounded fetch → diff → one sink write.

Each owned shard opens its writer and restores its state; then every project of the shard
gets its own loop, so one throttled, slow or broken project never holds up another. What a
cycle saw is written in one batch (a Kafka transaction with the exactly-once sink) under the
shard's lock; the in-memory state moves only after that write returns. A sink failure closes
and reopens the shard (its restored state is the truth about what committed) while its
projects pause, and the next cycle derives the same events with the same ids again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
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
from datetime import UTC, datetime
from typing import Literal, Protocol

import orjson

from bridge import events, lifecycle, sweep
from bridge.breaker import BreakerState
from bridge.client import parse_job_body
from bridge.diff import JobChange, diff
from bridge.errors import (
    ApiError,
    AuthError,
    CircuitOpen,
    JobNotFound,
    MalformedResponse,
    ProducerFencedError,
    RateLimited,
    SinkError,
)
from bridge.metrics import Metrics
from bridge.models import Fetched, JobListItem, JsonDict
from bridge.settings import Settings
from bridge.sharding import shard_of
from bridge.sink import Batch, ShardWriter, Sink

__all__ = ["JobApi", "PollConfig", "Scheduler", "fingerprint", "ticks"]

log = logging.getLogger(__name__)

Mode = Literal["detail", "list", "sweep"]

# A cycle's changes go out in batches of at most this many jobs: a first sweep of a big
# project must not become one giant transaction.
MAX_BATCH_JOBS = 500
# Distinct malformed bodies remembered per project (so each goes to the DLQ once).
DEAD_LETTER_MEMORY = 10_000
# Reopening a shard after a sink failure backs off up to this long.
REOPEN_MAX_DELAY_S = 30.0

# A `show_detail=true` row lacks `user_name`, `root_id` (light-row and detail fields) and
# `duration` (light rows only): in sweep mode they are never compared, so a snapshot taken
# from a detail call (a delete check, a transitional poll, or state written in another mode)
# does not read as an update. See bridge/simulator/render.py and reference §1.3.
SWEEP_ONLY_DIFFER: tuple[str, ...] = ("user_name", "root_id", "duration")


def fingerprint(data: bytes) -> bytes:
    """16 bytes that differ when ``data`` does: compared before anything is parsed."""
    return hashlib.blake2b(data, digest_size=16).digest()


class JobApi(Protocol):
    """What the scheduler asks of DLI (``DliClient`` in production)."""

    def iter_pages(
        self, project_id: str, *, show_detail: bool = False
    ) -> AsyncIterator[list[Fetched[JobListItem]]]: ...

    async def get_job_body(self, project_id: str, job_id: int) -> bytes: ...

    def breaker_states(self) -> Mapping[str, BreakerState]: ...


@dataclass(frozen=True, slots=True)
class PollConfig:
    """The polling knobs the scheduler needs, taken once from Settings."""

    mode: Mode = "list"
    interval_s: float = 30.0
    transitional_interval_s: float = 5.0
    reconcile_interval_s: float = 600.0
    delete_after_misses: int = 2
    ignore: tuple[str, ...] = ("duration",)
    jitter_s: float = 1.0
    max_in_flight: int = 32
    per_project_in_flight: int = 8
    partitions: int = 12
    event_options: events.EventOptions = field(
        default_factory=lambda: events.EventOptions(region="local")
    )

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
        )


# --- cadence ------------------------------------------------------------------------------------


async def wait_stop(stop: asyncio.Event, deadline: float) -> bool:
    """Sleep until the loop time ``deadline``; False as soon as ``stop`` is set."""
    if stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await stop.wait()
    return not stop.is_set()


async def ticks(
    period_s: float, jitter_s: float, stop: asyncio.Event, rng: random.Random
) -> AsyncGenerator[float, None]:
    """Drift-free ticks until ``stop``: yields each tick's nominal loop time.

    The n-th tick is due at ``start + n * period_s`` plus a fresh jitter, however long the
    work between ticks took; ticks missed by slow work are skipped, never bunched up.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + rng.uniform(0.0, jitter_s)
    n = 0
    while await wait_stop(stop, start + n * period_s + (rng.uniform(0.0, jitter_s) if n else 0.0)):
        yield start + n * period_s
        n = max(n + 1, math.ceil((loop.time() - start) / period_s))


# --- what the engine remembers -------------------------------------------------------------------


@dataclass(slots=True)
class Tracked:
    """One job as last committed: compact snapshot bytes plus their fingerprint."""

    sequence: int
    snapshot: bytes
    fingerprint: bytes  # of the body (detail) or row bytes (sweep) the snapshot came from
    observed_at: datetime
    known: sweep.Known


@dataclass(slots=True, eq=False)
class ProjectState:
    """The jobs of one project; replaced wholesale whenever its shard is restored."""

    project_id: str
    jobs: dict[int, Tracked] = field(default_factory=dict)
    discovering: bool = True  # no restored state: the first complete sweep says "discovered"
    to_discover: set[int] | None = None  # the jobs of that sweep not yet committed
    transitional: set[int] = field(default_factory=set)
    sent_dead_letters: set[tuple[int | None, bytes]] = field(default_factory=set)
    last_breaker: BreakerState = BreakerState.CLOSED
    sweep_failing: bool = False

    def discovers(self, job_id: int) -> bool:
        """Whether a first sight of ``job_id`` is a discovery (else it was created)."""
        return self.discovering and (self.to_discover is None or job_id in self.to_discover)

    def note_sweep(self, rows: Iterable[int]) -> None:
        """After a complete sweep's commit: discovery ends once its jobs are all known."""
        if not self.discovering:
            return
        listed = set(rows)
        pending = listed if self.to_discover is None else self.to_discover & listed
        self.to_discover = pending - self.jobs.keys()
        if not self.to_discover:
            self.discovering, self.to_discover = False, None

    def set_status(self, job_id: int, status: str | None) -> None:
        if status in lifecycle.TRANSITIONAL:
            self.transitional.add(job_id)
        else:
            self.transitional.discard(job_id)


@dataclass(slots=True)
class Seen:
    """A change one cycle observed, waiting for its commit."""

    job_id: int
    change: JobChange
    snapshot: bytes | None  # None: deleted
    fingerprint: bytes
    row_fp: bytes | None
    observed_at: float  # epoch seconds


@dataclass(slots=True)
class Cycle:
    """What one poll cycle of one project collected."""

    project: ProjectState
    epoch: int
    seen: list[Seen] = field(default_factory=list)
    dead: dict[tuple[int | None, bytes], events.OutRecord] = field(default_factory=dict)
    rows: dict[int, JsonDict] | None = None
    row_fps: dict[int, bytes] = field(default_factory=dict)
    row_bytes: dict[int, bytes] = field(default_factory=dict)  # sweep mode: the snapshots


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _tracked_from(value: events.StateValue) -> Tracked:
    snapshot = value.snapshot
    status = orjson.loads(snapshot).get("status")
    observed = value.observed_at
    known = sweep.Known(value.row_fingerprint, observed.timestamp(), status)
    return Tracked(value.sequence, snapshot, value.fingerprint, observed, known)


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


def _chunks(items: Sequence[Seen], size: int) -> Iterator[Sequence[Seen]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- one shard -----------------------------------------------------------------------------------

ShardStatus = Literal["restoring", "ready", "sink_down", "stopped"]


class ShardRunner:
    """One owned shard: its writer, its projects' state, the lock its writes take, readiness.

    ``ensure_open`` (re)opens the shard with backoff while its projects wait; ``write`` runs
    one batch unless the shard was reopened since the cycle began (``epoch``), in which case
    the batch is dropped: the restored state may already hold it, and the next cycle derives
    it again from that truth.
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
        ignored = self._install(restored)
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

    def _install(self, restored: Mapping[bytes, events.StateValue]) -> int:
        fresh = {
            pid: ProjectState(
                pid, sent_dead_letters=old.sent_dead_letters, last_breaker=old.last_breaker
            )
            for pid, old in self.projects.items()
        }
        ignored = 0
        for value in restored.values():
            project = fresh.get(value.project_id)
            if project is None:
                ignored += 1
                continue
            tracked = _tracked_from(value)
            project.jobs[value.job_id] = tracked
            project.discovering = False
            project.set_status(value.job_id, tracked.known.status)
        self.projects = fresh
        return ignored

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
            # writer in turn. Membership will stop the shard here instead.
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


# --- the scheduler -------------------------------------------------------------------------------


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
        self._pool = asyncio.Semaphore(config.max_in_flight)
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

    def stop(self) -> None:
        """Start no new cycle; running ones finish and every shard closes."""
        if not self._stop.is_set():
            log.info("scheduler stopping: %d shards", len(self._runners))
        self._stop.set()

    def start_shard(self, shard: int, generation: int = 0) -> None:
        if self._group is None:
            raise RuntimeError("start_shard() needs a running scheduler")
        if shard in self._runners:
            return
        runner = ShardRunner(shard, generation, self._by_shard.get(shard, ()), self._sink)
        self._runners[shard] = runner
        self._group.create_task(self._run_shard(runner), name=f"shard-{shard}")

    async def stop_shard(self, shard: int) -> None:
        """Stop polling ``shard``; returns once its cycles ended and it is closed."""
        runner = self._runners.get(shard)
        if runner is None:
            return
        runner.stop.set()
        await runner.closed.wait()

    def shard_status(self) -> dict[int, ShardStatus]:
        return {shard: runner.status for shard, runner in self._runners.items()}

    def jobs_tracked(self) -> int:
        return sum(len(p.jobs) for r in self._runners.values() for p in r.projects.values())

    async def _run_shard(self, runner: ShardRunner) -> None:
        try:
            if not await runner.ensure_open():
                return
            async with asyncio.TaskGroup() as group:
                for pid in runner.project_ids:
                    group.create_task(self._run_project(runner, pid), name=f"project-{pid}")
                await runner.stop.wait()
        finally:
            await runner.close()
            del self._runners[runner.shard]
            log.info("shard %d closed", runner.shard)

    # --- one project -----------------------------------------------------------------------

    async def _run_project(self, runner: ShardRunner, project_id: str) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        fast = min(cfg.transitional_interval_s, cfg.interval_s)
        beats = ticks(cfg.interval_s, cfg.jitter_s, runner.stop, self._rng)
        async with contextlib.aclosing(beats):
            async for nominal in beats:
                await self._poll(runner, project_id, full=True)
                next_due = nominal + cfg.interval_s
                # Between sweeps, jobs in transitional states get their own faster polls.
                while runner.projects[project_id].transitional and loop.time() + fast < next_due:
                    if not await wait_stop(runner.stop, loop.time() + fast):
                        return
                    await self._poll(runner, project_id, full=False)

    async def _poll(self, runner: ShardRunner, project_id: str, *, full: bool) -> None:
        if not await runner.ensure_open():
            return
        project = runner.projects[project_id]
        cycle = Cycle(project, runner.epoch)
        try:
            outcome = await self._cycle(runner, cycle, full=full)
        except Exception:
            # A bug must cost one project one cycle, never the process.
            log.exception("project %s: poll cycle failed", project_id)
            outcome = "error"
        self.metrics.polls.labels(self.config.mode, outcome).inc()
        self._watch_breaker(project)

    async def _cycle(self, runner: ShardRunner, cycle: Cycle, *, full: bool) -> str:
        if full:
            cycle.rows = await self._sweep(cycle)
        fetch, confirm = self._decide(cycle, full=full)
        if cycle.rows is not None and self.config.mode == "sweep":
            self._judge_rows(cycle)
        await self._fetch_all(cycle, fetch, confirm)
        if not await self._commit(runner, cycle):
            return "aborted"
        if cycle.rows is not None:
            cycle.project.note_sweep(cycle.rows)
        return "incomplete" if full and cycle.rows is None else "ok"

    # --- sweep and decisions ---------------------------------------------------------------

    async def _sweep(self, cycle: Cycle) -> dict[int, JsonDict] | None:
        """Every row of the project, or None when the sweep did not complete."""
        pid = cycle.project.project_id
        rows: dict[int, JsonDict] = {}
        started = time.perf_counter()
        try:
            async for page in self._api.iter_pages(pid, show_detail=self.config.mode == "sweep"):
                self._api_done("list", "ok", started)
                started = time.perf_counter()
                for item in page:
                    rows[item.model.job_id] = item.raw
        except ApiError as exc:
            self._api_done("list", _api_outcome(exc), started)
            if isinstance(exc, MalformedResponse):
                self._dead_letter(cycle, None, exc, self._clock())
            self._sweep_state(cycle.project, exc)
            return None
        self._sweep_state(cycle.project, None)
        self.metrics.last_sweep.labels(pid).set(self._clock())
        return rows

    def _sweep_state(self, project: ProjectState, error: ApiError | None) -> None:
        failing = error is not None
        if failing != project.sweep_failing:
            project.sweep_failing = failing
            if failing:
                log.warning("project %s: list sweep failing (%r)", project.project_id, error)
            else:
                log.info("project %s: list sweep complete again", project.project_id)

    def _decide(self, cycle: Cycle, *, full: bool) -> tuple[list[int], frozenset[int]]:
        """Which jobs get a detail call this cycle, and which of them are delete checks."""
        cfg, project = self.config, cycle.project
        rows = None
        if cycle.rows is not None:
            rows = [
                sweep.Row(jid, self._row_fp(cycle, jid, raw), raw.get("status"))
                for jid, raw in cycle.rows.items()
            ]
        plan = sweep.plan(
            {jid: tracked.known for jid, tracked in project.jobs.items()},
            rows,
            now=self._clock(),
            reconcile_interval_s=cfg.reconcile_interval_s,
            transitional_interval_s=cfg.transitional_interval_s,
            delete_after_misses=cfg.delete_after_misses,
        )
        if cycle.rows is not None:
            self._count_misses(project, cycle.rows, plan.missing)
        confirm = frozenset(plan.confirm_delete)
        if not full:
            fetch = [j for j, why in plan.fetch.items() if why is sweep.Reason.TRANSITIONAL]
        elif cfg.mode == "list":
            fetch = list(plan.fetch)
        elif cfg.mode == "sweep":
            fetch = list(confirm)
        else:  # detail: every job, every interval
            fetch = sorted(set(project.jobs) | set(cycle.rows or ()))
        return fetch, confirm

    def _row_fp(self, cycle: Cycle, job_id: int, raw: JsonDict) -> bytes:
        mode = self.config.mode
        if mode == "list":
            fp = sweep.row_fingerprint(raw, self.config.ignore)
        elif mode == "sweep":
            data = orjson.dumps(raw)
            cycle.row_bytes[job_id] = data
            fp = fingerprint(data)
        else:
            return b""  # detail mode fetches every job anyway
        cycle.row_fps[job_id] = fp
        return fp

    @staticmethod
    def _count_misses(
        project: ProjectState, rows: Mapping[int, JsonDict], missing: Iterable[int]
    ) -> None:
        for job_id in missing:
            project.jobs[job_id].known.misses += 1
        for job_id in rows:
            tracked = project.jobs.get(job_id)
            if tracked is not None:
                tracked.known.misses = 0

    # --- observing jobs --------------------------------------------------------------------

    def _judge_rows(self, cycle: Cycle) -> None:
        """Sweep mode: each show_detail row is the job's snapshot."""
        observed = self._clock()
        for job_id, raw in (cycle.rows or {}).items():
            fp = cycle.row_fps[job_id]
            self._judge_doc(cycle, job_id, raw, cycle.row_bytes[job_id], fp, observed)

    async def _fetch_all(
        self, cycle: Cycle, job_ids: Sequence[int], confirm: frozenset[int]
    ) -> None:
        """Detail calls through the shared pool, at most a project's share at once."""
        if not job_ids:
            return
        pending = iter(job_ids)

        async def worker() -> None:
            for job_id in pending:
                async with self._pool:
                    await self._fetch_one(cycle, job_id, job_id in confirm)

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
                self._deleted(cycle, job_id)
            return
        except ApiError as exc:
            self._api_done("detail", _api_outcome(exc), started)
            log.debug("project %s job %d: detail failed (%r)", pid, job_id, exc)
            return
        self._api_done("detail", "ok", started)
        self._judge_body(cycle, job_id, body, self._clock())

    def _judge_body(self, cycle: Cycle, job_id: int, body: bytes, observed: float) -> None:
        fp = fingerprint(body)
        tracked = cycle.project.jobs.get(job_id)
        if tracked is not None and tracked.fingerprint == fp:
            # The same bytes as last time: unchanged, and nothing was parsed to know it.
            self._touch(tracked, cycle.row_fps.get(job_id), observed)
            return
        pid = cycle.project.project_id
        try:
            raw = parse_job_body(body, project_id=pid, job_id=job_id).raw
        except MalformedResponse as exc:
            self._dead_letter(cycle, job_id, exc, observed)
            return
        except ApiError as exc:  # is_success false in a 2xx answer
            log.info("project %s job %d: detail refused (%r)", pid, job_id, exc)
            return
        self._judge_doc(cycle, job_id, raw, None, fp, observed)

    def _judge_doc(
        self,
        cycle: Cycle,
        job_id: int,
        raw: JsonDict,
        data: bytes | None,
        fp: bytes,
        observed: float,
    ) -> None:
        tracked = cycle.project.jobs.get(job_id)
        row_fp = cycle.row_fps.get(job_id)
        if tracked is not None and tracked.fingerprint == fp:
            self._touch(tracked, row_fp, observed)
            return
        before = orjson.loads(tracked.snapshot) if tracked is not None else None
        first = tracked is None and cycle.project.discovers(job_id)
        change = diff(before, raw, ignore=self.config.ignore, first_sweep=first)
        if change is None:
            assert tracked is not None  # diff(None, doc) is always a change
            tracked.fingerprint = fp
            self._touch(tracked, row_fp, observed)
            return
        snapshot = data if data is not None else orjson.dumps(raw)
        cycle.seen.append(Seen(job_id, change, snapshot, fp, row_fp, observed))

    @staticmethod
    def _touch(tracked: Tracked, row_fp: bytes | None, observed: float) -> None:
        tracked.known.detail_at = observed
        if row_fp is not None:
            tracked.known.row_fp = row_fp

    def _deleted(self, cycle: Cycle, job_id: int) -> None:
        tracked = cycle.project.jobs.get(job_id)
        if tracked is None:
            return
        change = diff(orjson.loads(tracked.snapshot), None, ignore=self.config.ignore)
        if change is not None:
            cycle.seen.append(Seen(job_id, change, None, b"", None, self._clock()))

    def _dead_letter(
        self, cycle: Cycle, job_id: int | None, exc: MalformedResponse, observed: float
    ) -> None:
        error = f"{exc.message}: {exc.detail}" if exc.detail else exc.message
        # A list page carries volatile fields (duration), so its bytes differ on every sweep:
        # a broken page is remembered by what is wrong with it, a job's body by its bytes.
        key = (job_id, fingerprint(exc.body if job_id is not None else error.encode()))
        if key in cycle.project.sent_dead_letters or key in cycle.dead:
            return
        cycle.dead[key] = events.dead_letter(
            project_id=cycle.project.project_id,
            job_id=job_id,
            body=exc.body,
            error=error,
            request_id=exc.request_id,
            observed_at=_utc(observed),
        )

    # --- commit ----------------------------------------------------------------------------

    async def _commit(self, runner: ShardRunner, cycle: Cycle) -> bool:
        """Write what the cycle saw, batch by batch; state moves after each write returns."""
        dead = list(cycle.dead.items())
        chunks = list(_chunks(cycle.seen, MAX_BATCH_JOBS)) or ([()] if dead else [])
        for chunk in chunks:
            batch = self._batch(runner, cycle.project, chunk, [record for _, record in dead])
            if not await runner.write(cycle.epoch, batch):
                self.metrics.transactions.labels("failed").inc()
                return False
            self.metrics.transactions.labels("committed").inc()
            self._apply(cycle.project, chunk, [key for key, _ in dead])
            dead = []
        return True

    def _batch(
        self,
        runner: ShardRunner,
        project: ProjectState,
        chunk: Sequence[Seen],
        dead: Sequence[events.OutRecord],
    ) -> Batch:
        pid, options = project.project_id, self.config.event_options
        out: list[events.OutRecord] = []
        state: list[events.OutRecord] = []
        for seen in chunk:
            tracked = project.jobs.get(seen.job_id)
            sequence = (tracked.sequence if tracked is not None else 0) + 1
            observed_at = _utc(seen.observed_at)
            out.append(
                events.build_event(
                    seen.change,
                    project_id=pid,
                    job_id=seen.job_id,
                    job_name=_job_name(seen.change),
                    sequence=sequence,
                    observed_at=observed_at,
                    previous_observed_at=tracked.observed_at if tracked is not None else None,
                    options=options,
                )
            )
            if seen.snapshot is None:
                state.append(events.state_tombstone(pid, seen.job_id, runner.generation))
                continue
            row_fp = seen.row_fp
            if row_fp is None and tracked is not None:
                row_fp = tracked.known.row_fp
            state.append(
                events.state_record(
                    project_id=pid,
                    job_id=seen.job_id,
                    sequence=sequence,
                    snapshot=seen.snapshot,
                    fingerprint=seen.fingerprint,
                    row_fingerprint=row_fp,
                    observed_at=observed_at,
                    generation=runner.generation,
                )
            )
        return Batch(events=out, state=state, dead_letters=dead)

    def _apply(
        self,
        project: ProjectState,
        chunk: Sequence[Seen],
        dead: Sequence[tuple[int | None, bytes]],
    ) -> None:
        """After the write: the committed changes become what we remember."""
        now = self._clock()
        for seen in chunk:
            self.metrics.events.labels(seen.change.kind.value).inc()
            self.metrics.change_to_commit.observe(max(0.0, now - seen.observed_at))
            tracked = project.jobs.get(seen.job_id)
            if seen.snapshot is None:
                project.jobs.pop(seen.job_id, None)
                project.set_status(seen.job_id, None)
                continue
            status = seen.change.status_after
            known = tracked.known if tracked is not None else sweep.Known(None, None, None)
            known.status, known.detail_at = status, seen.observed_at
            if seen.row_fp is not None:
                known.row_fp = seen.row_fp
            sequence = (tracked.sequence if tracked is not None else 0) + 1
            project.jobs[seen.job_id] = Tracked(
                sequence, seen.snapshot, seen.fingerprint, _utc(seen.observed_at), known
            )
            project.set_status(seen.job_id, status)
        if len(project.sent_dead_letters) + len(dead) > DEAD_LETTER_MEMORY:
            project.sent_dead_letters.clear()
        project.sent_dead_letters.update(dead)
        for _ in dead:
            self.metrics.dead_letters.labels("malformed").inc()

    # --- bookkeeping -----------------------------------------------------------------------

    def _api_done(self, endpoint: str, outcome: str, started: float) -> None:
        self.metrics.api_requests.labels(endpoint, outcome).inc()
        self.metrics.api_seconds.labels(endpoint).observe(time.perf_counter() - started)
        if outcome == "rate_limited":
            self.metrics.rate_limited.inc()

    def _watch_breaker(self, project: ProjectState) -> None:
        state = self._api.breaker_states().get(project.project_id, BreakerState.CLOSED)
        if state is project.last_breaker:
            return
        log.warning("project %s: breaker %s -> %s", project.project_id, project.last_breaker, state)
        project.last_breaker = state
        self.metrics.breaker_open.labels(project.project_id).set(
            0 if state is BreakerState.CLOSED else 1
        )


def _job_name(change: JobChange) -> str | None:
    doc = change.after if change.after is not None else change.before
    name = doc.get("name") if doc is not None else None
    return name if isinstance(name, str) else None
