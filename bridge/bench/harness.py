"""One benchmark run: the simulator, Kafka, the reference loops, the bridge rows, the sweep.

One run starts the simulator (its own process) and Kafka (local, or
``KAFKA_BOOTSTRAP_SERVERS``), then measures, one after another on the same simulator:
the bare aiohttp loop, the official SDK loop, and the bridge in each mode — every bridge row
a `dli-bridge run` child of its own with its own topics, so its CPU and memory are its own.
``--sweep`` adds the scaling sweep (list mode at growing fleets, 30 s interval). Figures and
targets: ``report``; processes: ``run``; reference loops: ``loops``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiohttp
import orjson

from bridge.bench import kafka as benchkafka
from bridge.bench.loops import LoopFigures, Schedule, Target, run_loop
from bridge.bench.report import (
    Row,
    SweepPoint,
    latencies,
    observable,
    percentile,
)
from bridge.bench.run import BridgeChild, BridgeSpec, Sample, simulator
from bridge.errors import BenchError
from bridge.models import JsonDict

__all__ = ["BenchConfig", "Report", "run"]

log = logging.getLogger(__name__)

Say = Callable[[str], object]
T = TypeVar("T")
MODES = ("detail", "list", "sweep")
DEFAULT_SWEEP_SIZES = (1_000, 10_000, 50_000, 100_000)
CHANGE_SHARE_PER_MIN = 0.01  # default change rate: 1 % of the jobs each minute
_REQUESTS = "dli_bridge_api_requests_total"
_SETTLE_S = 1.0
BESIDE_LEAD_S = 3.0  # a loop process spawns, imports and warms up in less
BESIDE_NAMES = {"paced": "bare paced (beside)", "sdk_paced": "sdk paced (beside)"}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What one benchmark run measures (``dli-bridge bench`` flags)."""

    projects: int = 10
    jobs_per_project: int = 100
    change_rate: float | None = None  # changes/s across the fleet; None = 1 % of jobs a minute
    modes: tuple[str, ...] = MODES
    interval_s: float = 5.0
    jitter_s: float | None = None  # None: a tenth of the interval, at most 1 s
    duration_s: float = 30.0
    instances: int = 1
    concurrency: int = 32
    burst: int = 1_000  # changes per second during the burst
    burst_s: float = 3.0
    baselines: bool = True
    sweep_sizes: tuple[int, ...] = ()
    sweep_interval_s: float = 30.0
    sweep_jobs_per_project: int = 200
    sweep_duration_s: float = 60.0
    partitions: int = 12
    bootstrap_servers: str | None = None
    seed: int = 0
    json_path: str | None = None  # written after every row, so a failed run keeps its figures
    transitional_interval_s: float = 5.0  # the bridge's fast lane (= interval turns it off)

    @property
    def jitter(self) -> float:
        return self.jitter_s if self.jitter_s is not None else min(1.0, self.interval_s / 10)

    def rate_for(self, jobs: int) -> float:
        if self.change_rate is not None:
            return self.change_rate
        return jobs * CHANGE_SHARE_PER_MIN / 60


@dataclass(slots=True)
class Report:
    """Everything one run measured, as printed and as written to ``--json``."""

    config: BenchConfig
    meta: JsonDict
    rows: list[Row] = field(default_factory=list)
    points: list[SweepPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> bytes:
        from bridge.bench.report import targets

        doc = {
            "meta": self.meta,
            "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
            "rows": [r.as_dict() for r in self.rows],
            "sweep": [p.as_dict() for p in self.points],
            "targets": [
                {"name": t.name, "figure": t.figure, "met": t.met}
                for t in targets(self.rows, self.points)
            ],
            "notes": self.notes,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def save(self) -> None:
        if self.config.json_path:
            Path(self.config.json_path).write_bytes(self.as_json())

    async def guard(self, what: str, work: Awaitable[T], say: Say) -> T | None:
        """Run one row; a row that fails becomes a note instead of ending the run."""
        try:
            result = await work
        except BenchError as exc:
            note = f"{what} failed: {exc}"
            self.notes.append(note)
            say(note)
            return None
        return result


def machine() -> JsonDict:
    """Where the figures come from: date, CPU model and count, Python."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo").read().splitlines():  # noqa: SIM115 (tiny, one read)
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- one fleet: simulator + session ------------------------------------------------------------


@dataclass(slots=True)
class Fleet:
    """A running simulator child and what the benchmark knows of it."""

    url: str
    project_ids: list[str]
    jobs_per_project: int
    session: aiohttp.ClientSession
    bootstrap: str
    cursor: int = 0  # ground-truth entries already read

    async def targets(self, project_ids: Sequence[str]) -> list[Target]:
        out: list[Target] = []
        for pid in project_ids:
            async with self.session.get(f"{self.url}/_sim/jobs", params={"project_id": pid}) as r:
                out += [(pid, int(job["job_id"])) for job in (await r.json())["jobs"]]
        return out

    async def changes(self) -> list[JsonDict]:
        """Ground-truth changes since the last call."""
        url = f"{self.url}/_sim/changes"
        async with self.session.get(url, params={"since": str(self.cursor)}) as response:
            found: list[JsonDict] = orjson.loads(await response.read())["changes"]
        self.cursor += len(found)
        return found

    async def mean_jobs(self, project_ids: Sequence[str]) -> float:
        """The projects' mean job count now, from each project's total_count."""
        jobs = 0
        for pid in project_ids:
            url = f"{self.url}/v1.0/{pid}/streaming/jobs"
            async with self.session.get(url, params={"limit": "1"}) as response:
                jobs += int((await response.json())["job_list"]["total_count"])
        return jobs / max(1, len(project_ids))

    async def step(self, changes: int) -> None:
        url = f"{self.url}/_sim/step"
        async with self.session.post(url, params={"changes": str(changes)}) as response:
            await response.read()


@contextlib.asynccontextmanager
async def _fleet(
    config: BenchConfig, projects: int, jobs_per_project: int, bootstrap: str
) -> AsyncIterator[Fleet]:
    rate = config.rate_for(projects * jobs_per_project)
    async with (
        simulator(projects, jobs_per_project, rate, config.seed) as (url, _pid),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
    ):
        async with session.get(f"{url}/v3/projects") as response:
            ids = [p["id"] for p in (await response.json())["projects"]]
        fleet = Fleet(url, ids, jobs_per_project, session, bootstrap)
        fleet.cursor = projects * jobs_per_project  # the seed's "created" entries
        yield fleet


@contextlib.asynccontextmanager
async def kafka_at(given: str | None, say: Say) -> AsyncIterator[str]:
    """Bootstrap servers: ``given``, else ``KAFKA_BOOTSTRAP_SERVERS``, else a local broker
    started here for as long as the context lasts."""
    given = given or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from bridge.localkafka import LocalKafka, default_kafka_version

    say("starting a local Kafka broker…")
    async with LocalKafka(default_kafka_version()) as kafka:
        yield kafka.bootstrap_servers


# --- reference loops -----------------------------------------------------------------------------


def _loop_row(name: str, figures: LoopFigures, jobs: int) -> Row:
    done = max(1, figures.requests)
    return Row(
        name=name,
        jobs=jobs,
        polls_per_s=figures.requests / figures.wall_s,
        cpu_us_per_poll=figures.cpu_s / done * 1e6,
        cores=figures.cpu_s / figures.wall_s,
        errors=figures.errors,
    )


def _has_sdk() -> bool:
    import importlib.util

    return importlib.util.find_spec("huaweicloudsdkdli") is not None


def _schedule(config: BenchConfig) -> Schedule:
    """The bridge's own pacing in detail mode (see PollConfig.from_settings)."""
    return Schedule(config.interval_s, max(1, config.concurrency // 4))


async def _loops(config: BenchConfig, fleet: Fleet, say: Say) -> list[Row]:
    targets = await fleet.targets(fleet.project_ids)
    rows = []
    loops = [("bare", "bare loop"), ("paced", "bare paced")]
    if not _has_sdk():
        say("no sdk loop: install the official SDK with `pip install 'dli-bridge[bench]'`")
    else:
        loops += [("sdk", "sdk loop"), ("sdk_paced", "sdk paced")]
    for kind, name in loops:
        say(f"measuring the {name} ({config.concurrency} at once, {config.duration_s:g} s)…")
        figures = await run_loop(
            kind, fleet.url, targets, config.concurrency, config.duration_s, _schedule(config)
        )
        rows.append(_loop_row(name, figures, len(targets)))
    return rows


def _beside_kinds(config: BenchConfig) -> tuple[str, ...]:
    """The paced loops measured side by side with the bridge in detail mode."""
    if not config.baselines:
        return ()
    return ("paced", "sdk_paced") if _has_sdk() else ("paced",)


# --- bridge rows --------------------------------------------------------------------------------


def _delta(before: dict[str, float], after: dict[str, float], prefix: str) -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))


def _polls(mode: str, before: dict[str, float], after: dict[str, float], per_cycle: float) -> float:
    """Job observations between two scrapes: detail calls, or rows read in list sweeps.

    A list or sweep cycle of a project observes every job of it once, so its observations are
    the completed cycles times ``per_cycle``, the watched projects' mean job count. (Counting
    pages instead flips between one and two per sweep when a project hovers at a page's size.)
    """
    if mode == "detail":
        return _delta(before, after, f'{_REQUESTS}{{endpoint="detail",outcome="ok"}}')
    cycles = _delta(before, after, f'dli_bridge_polls_total{{mode="{mode}",outcome="ok"}}')
    return cycles * per_cycle


@dataclass(slots=True)
class Window:
    """Scrapes and /proc samples of every instance at two moments."""

    metrics: list[dict[str, float]]
    samples: list[Sample]
    wall_ms: int


async def _look(children: Sequence[BridgeChild]) -> Window:
    metrics = [await c.metrics() for c in children]
    return Window(metrics, [c.sample() for c in children], int(time.time() * 1000))


def _settled(metrics: Sequence[dict[str, float]], jobs: int, partitions: int) -> bool:
    """Every job tracked and, with several instances, every shard owned by exactly one."""
    tracked = sum(m.get("dli_bridge_jobs_tracked", 0.0) for m in metrics)
    owned = [m.get("dli_bridge_shards_owned", 0.0) for m in metrics]
    shared = len(metrics) == 1 or (sum(owned) == partitions and min(owned) > 0)
    return tracked >= 0.95 * jobs and shared


async def _warm(
    children: Sequence[BridgeChild], jobs: int, partitions: int, settle_s: float
) -> None:
    """Wait until the first sweep is committed (every job tracked), then one more interval."""
    deadline = time.monotonic() + 120 + jobs / 200
    while time.monotonic() < deadline:
        metrics = (await _look(children)).metrics
        if _settled(metrics, jobs, partitions):
            await asyncio.sleep(settle_s)
            return
        failing = [c for c, m in zip(children, metrics, strict=True) if _failing(m)]
        if failing:
            raise BenchError(f"{failing[0]!r}: every poll fails:\n{failing[0].problems()}")
        await asyncio.sleep(0.2)
    problems = "".join(c.problems() for c in children)
    raise BenchError(f"the bridge did not track {jobs} jobs in time:\n{problems}")


def _failing(metrics: dict[str, float]) -> bool:
    """Many failed cycles and not one good one: the bridge is broken, not slow."""
    polls = "dli_bridge_polls_total{"
    errors = sum(v for k, v in metrics.items() if k.startswith(polls) and 'outcome="error"' in k)
    good = sum(v for k, v in metrics.items() if k.startswith(polls) and 'outcome="ok"' in k)
    return errors >= 50 and good == 0


@dataclass(frozen=True, slots=True)
class RowPlan:
    """One bridge row: mode, fleet slice, interval, instances, and whether to burst."""

    mode: str
    projects: Sequence[str]
    interval_s: float
    jitter_s: float
    duration_s: float
    instances: int = 1
    burst: int = 0
    burst_s: float = 0.0
    beside: tuple[str, ...] = ()  # loop kinds run side by side over the steady window


async def _bridge_children(
    stack: contextlib.AsyncExitStack, fleet: Fleet, spec: BridgeSpec, instances: int
) -> list[BridgeChild]:
    await benchkafka.create_events_topic(fleet.bootstrap, spec.topic("events"), spec.partitions)
    return [
        await stack.enter_async_context(BridgeChild(spec, fleet.session)) for _ in range(instances)
    ]


@dataclass(frozen=True, slots=True)
class Measured:
    """The three looks at one bridge row and where its events went."""

    start: Window  # warm-up done: the steady window begins
    steady: Window  # steady window over: the burst begins
    end: Window  # burst committed (one interval later)
    topic: str
    per_cycle: float  # jobs one list or sweep cycle observes
    beside: tuple[Row, ...] = ()  # the loops measured over (a little more than) the window


async def measure(config: BenchConfig, fleet: Fleet, plan: RowPlan) -> Measured:
    """Run one bridge row: warm-up, steady window, burst."""
    jobs = len(plan.projects) * fleet.jobs_per_project
    spec = BridgeSpec(
        name=f"{uuid.uuid4().hex[:8]}-{plan.mode}-{plan.instances}",
        mode=plan.mode,
        endpoint=fleet.url,
        bootstrap_servers=fleet.bootstrap,
        projects=list(plan.projects),
        interval_s=plan.interval_s,
        jitter_s=plan.jitter_s,
        partitions=config.partitions,
        max_in_flight=config.concurrency,
        transitional_interval_s=config.transitional_interval_s,
    )
    async with contextlib.AsyncExitStack() as stack:
        children = await _bridge_children(stack, fleet, spec, plan.instances)
        await _warm(children, jobs, spec.partitions, plan.interval_s + plan.jitter_s)
        per_cycle = await fleet.mean_jobs(plan.projects)
        beside = await _start_beside(stack, config, fleet, plan)
        await fleet.changes()  # the window's ground truth starts here
        start = await _look(children)
        await asyncio.sleep(plan.duration_s)
        steady = await _look(children)
        beside_rows = tuple([await task for task in beside])
        end = steady
        if plan.burst:
            for second in range(max(1, round(plan.burst_s))):
                if second:
                    await asyncio.sleep(1.0)
                await fleet.step(plan.burst)
            await asyncio.sleep(plan.interval_s + plan.jitter_s + _SETTLE_S)
            end = await _look(children)
    return Measured(start, steady, end, spec.topic("events"), per_cycle, beside_rows)


async def _start_beside(
    stack: contextlib.AsyncExitStack, config: BenchConfig, fleet: Fleet, plan: RowPlan
) -> list[asyncio.Task[Row]]:
    """Start ``plan.beside``'s loops so that their measured windows cover the bridge's: the
    same seconds of the same machine (a VM's speed drifts over minutes), the same simulator."""
    if not plan.beside:
        return []
    targets = await fleet.targets(plan.projects)
    span = BESIDE_LEAD_S + plan.duration_s + 1.0

    async def one(kind: str) -> Row:
        schedule = _schedule(config)
        figures = await run_loop(kind, fleet.url, targets, config.concurrency, span, schedule)
        return _loop_row(BESIDE_NAMES[kind], figures, len(targets))

    tasks = [asyncio.create_task(one(kind)) for kind in plan.beside]
    stack.callback(lambda: [task.cancel() for task in tasks])
    await asyncio.sleep(BESIDE_LEAD_S)  # spawned, imported, warmed up: measuring
    return tasks


def _steady(
    plan: RowPlan, per_cycle: float, start: Window, steady: Window
) -> tuple[float, float, list[float], float, int]:
    """Window seconds, CPU seconds, polls per instance, API requests, RSS bytes (steady)."""
    wall = max(1e-9, steady.samples[0].at - start.samples[0].at)
    cpu = sum(b.cpu_s - a.cpu_s for a, b in zip(start.samples, steady.samples, strict=True))
    polls = [
        _polls(plan.mode, a, b, per_cycle)
        for a, b in zip(start.metrics, steady.metrics, strict=True)
    ]
    requests = sum(
        _delta(a, b, _REQUESTS) for a, b in zip(start.metrics, steady.metrics, strict=True)
    )
    rss = sum(s.rss_bytes for s in steady.samples)
    return wall, cpu, polls, requests, rss


async def bridge_row(
    config: BenchConfig, fleet: Fleet, plan: RowPlan, baseline_rss: int, name: str
) -> list[Row]:
    """Measure one bridge row end to end, latency and burst included; then the rows of the
    loops measured beside it."""
    seen = await measure(config, fleet, plan)
    jobs = len(plan.projects) * fleet.jobs_per_project
    wall, cpu, polls, requests, rss = _steady(plan, seen.per_cycle, seen.start, seen.steady)
    total = max(1e-9, sum(polls))
    row = Row(
        name=name,
        jobs=jobs,
        polls_per_s=total / wall,
        cpu_us_per_poll=cpu / total * 1e6,
        cores=cpu / wall,
        requests_per_job_min=requests / jobs / (wall / 60),
        rss_mb=rss / 2**20,
        kb_per_job=(rss - baseline_rss * plan.instances) / jobs / 1024,
        instances=plan.instances,
        poll_split=[p / total for p in polls],
        interval_s=plan.interval_s,
    )
    commits = await benchkafka.committed(
        fleet.bootstrap, seen.topic, config.partitions, since_ms=seen.start.wall_ms
    )
    await _latency(fleet, plan, row, seen, commits)
    if plan.burst:
        _burst(row, seen, commits)
    return [row, *seen.beside]


async def _latency(
    fleet: Fleet, plan: RowPlan, row: Row, seen: Measured, commits: Sequence[benchkafka.Commit]
) -> None:
    truth = await fleet.changes()
    watched = set(plan.projects)
    # only changes the bridge had a full interval (plus jitter and a commit) to see
    until_ms = seen.end.wall_ms - int((plan.interval_s + plan.jitter_s + 1.0) * 1000)
    stable_ms = int((plan.interval_s + plan.jitter_s) * 1000)
    mine = [c for c in truth if c["project_id"] in watched]
    window = [c for c in observable(mine, stable_ms) if seen.start.wall_ms <= c["at"] <= until_ms]
    found = latencies(window, commits)
    row.changes, row.matched = len(window), len(found)
    row.p50_ms, row.p99_ms = percentile(found, 0.5), percentile(found, 0.99)


def _burst(row: Row, seen: Measured, commits: Sequence[benchkafka.Commit]) -> None:
    """Events and transactions per second while the burst's changes were committed."""
    began = seen.steady.wall_ms
    stamps = [ts for _, ts in commits if ts >= began]
    if not stamps:
        return
    span_s = max(0.001, (max(stamps) - began) / 1000)
    txns = sum(
        _delta(a, b, 'dli_bridge_transactions_total{outcome="committed"}')
        for a, b in zip(seen.steady.metrics, seen.end.metrics, strict=True)
    )
    row.burst_events_per_s = len(stamps) / span_s
    row.burst_txn_per_s = txns / span_s


# --- the run -------------------------------------------------------------------------------------


async def run(config: BenchConfig, say: Say) -> Report:
    """Run every part ``config`` asks for; ``say`` gets progress lines."""
    report = Report(config, machine())
    async with kafka_at(config.bootstrap_servers, say) as bootstrap:
        say(f"kafka {bootstrap}")
        await _main_rows(config, bootstrap, report, say)
        if config.sweep_sizes:
            await _sweep(config, bootstrap, report, say)
    return report


async def _main_rows(config: BenchConfig, bootstrap: str, report: Report, say: Say) -> None:
    say(f"simulator: {config.projects} projects x {config.jobs_per_project} jobs")
    async with _fleet(config, config.projects, config.jobs_per_project, bootstrap) as fleet:
        # the baseline bridge sits idle on an empty project: it may share the loops' time
        baseline_task = asyncio.create_task(_baseline_rss(config, fleet))
        if config.baselines:
            report.rows += await _loops(config, fleet, say)
            report.save()
        baseline = await baseline_task
        report.meta["baseline_rss_mb"] = baseline / 2**20
        for mode in config.modes:
            say(f"measuring the bridge in {mode} mode…")
            plan = RowPlan(
                mode,
                fleet.project_ids,
                config.interval_s,
                config.jitter,
                config.duration_s,
                burst=config.burst,
                burst_s=config.burst_s,
                beside=_beside_kinds(config) if mode == "detail" else (),
            )
            name = f"bridge {mode}"
            rows = await report.guard(name, bridge_row(config, fleet, plan, baseline, name), say)
            if rows is not None:
                report.rows += rows
                report.save()
        if config.instances > 1:
            await _scale_out(config, fleet, baseline, report, say)


async def _scale_out(
    config: BenchConfig, fleet: Fleet, baseline: int, report: Report, say: Say
) -> None:
    # One instance, then N, back to back and without a burst between them: the same fleet
    # (the rows before burst it, and its creations and deletions move the page count)
    for instances in (1, config.instances):
        say(f"measuring {instances} bridge instance{'s' * (instances > 1)} in list mode…")
        plan = RowPlan(
            "list",
            fleet.project_ids,
            config.interval_s,
            config.jitter,
            config.duration_s,
            instances=instances,
        )
        name = f"bridge list x{instances}"
        rows = await report.guard(name, bridge_row(config, fleet, plan, baseline, name), say)
        if rows is not None:
            report.rows += rows
            report.save()


async def _baseline_rss(config: BenchConfig, fleet: Fleet) -> int:
    """RSS of a bridge that watches one empty project: the process baseline."""
    spec = BridgeSpec(
        name=f"{uuid.uuid4().hex[:8]}-baseline",
        mode="list",
        endpoint=fleet.url,
        bootstrap_servers=fleet.bootstrap,
        projects=["0" * 32],
        interval_s=config.interval_s,
        jitter_s=0.0,
        partitions=config.partitions,
    )
    async with contextlib.AsyncExitStack() as stack:
        (child,) = await _bridge_children(stack, fleet, spec, 1)
        await asyncio.sleep(1.0)
        return child.sample().rss_bytes


async def _sweep(config: BenchConfig, bootstrap: str, report: Report, say: Say) -> None:
    per = config.sweep_jobs_per_project
    sizes = sorted(config.sweep_sizes)
    projects = max(1, -(-sizes[-1] // per))
    say(f"scaling sweep: simulator with {projects} projects x {per} jobs")
    swept = replace(config, interval_s=config.sweep_interval_s, jitter_s=1.0)
    async with _fleet(swept, projects, per, bootstrap) as fleet:
        baseline = await _baseline_rss(swept, fleet)
        runs = [("list", size) for size in sizes] + [("sweep", sizes[-1])]
        for mode, size in runs:
            say(f"  {mode} mode, {size:,} jobs…")
            work = _sweep_point(swept, fleet, mode, size, baseline)
            point = await report.guard(f"sweep {mode} {size}", work, say)
            if point is not None:
                report.points.append(point)
                report.save()


async def _sweep_point(
    config: BenchConfig, fleet: Fleet, mode: str, size: int, baseline: int
) -> SweepPoint:
    count = max(1, -(-size // fleet.jobs_per_project))
    plan = RowPlan(mode, fleet.project_ids[:count], config.interval_s, 1.0, config.sweep_duration_s)
    seen = await measure(config, fleet, plan)
    jobs = count * fleet.jobs_per_project
    wall, cpu, polls, requests, rss = _steady(plan, seen.per_cycle, seen.start, seen.steady)
    return SweepPoint(
        jobs=jobs,
        projects=count,
        mode=mode,
        interval_s=config.interval_s,
        cores=cpu / wall,
        rss_mb=rss / 2**20,
        kb_per_job=(rss - baseline) / jobs / 1024,
        requests_per_job_min=requests / jobs / (wall / 60),
        polls_per_s=sum(polls) / wall,
    )


def render(report: Report) -> str:
    """The plain-text report: machine, table, sweep, targets, notes."""
    from bridge.bench.report import sweep_table, table, targets, targets_text

    meta, config = report.meta, report.config
    lines = [
        f"dli-bridge bench — {meta['date']} — {meta['cpus']} x {meta['cpu_model']}, "
        f"Python {meta['python']}",
        f"fleet {config.projects} projects x {config.jobs_per_project} jobs, interval "
        f"{config.interval_s:g} s (jitter {config.jitter:g} s), {config.concurrency} in flight, "
        f"burst {config.burst} changes/s for {config.burst_s:g} s, "
        f"window {config.duration_s:g} s; bridge baseline RSS "
        f"{meta.get('baseline_rss_mb', 0.0):.1f} MB",
        "",
        table(report.rows),
    ]
    if report.points:
        lines += ["", f"scaling sweep ({config.sweep_interval_s:g} s interval):"]
        lines.append(sweep_table(report.points))
    lines += ["", "targets:", targets_text(targets(report.rows, report.points))]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
