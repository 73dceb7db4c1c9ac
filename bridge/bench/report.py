"""The benchmark's figures as values: rows, sweep points, latency matching, table, targets.

Pure: no I/O, no clock. ``bench.py`` measures; this module turns measurements into the
table a user reads, the JSON a later run compares with, and the verdict on each target of
the benchmark issue.

Change-to-commit latency is approximated per change as *record timestamp - simulator change
time*: the events topic is created with ``message.timestamp.type=LogAppendTime``, so the
timestamp is when the broker appended the record, a few milliseconds before the transaction's
commit marker (on a topic with CreateTime it is when the producer built the record, just
before the commit). Only *observable* changes count — the job did not change again within
one poll interval plus jitter — and each is matched to the first later event of the same
job with the same ``status_after``; a change the bridge could not see on its own (superseded
before any poll could see it) is left out of both ``changes`` and the percentiles.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.models import JsonDict

__all__ = [
    "Row",
    "SweepPoint",
    "Target",
    "latencies",
    "observable",
    "percentile",
    "sweep_table",
    "table",
    "targets",
]

EventKey = tuple[str, int, str | None]  # (project_id, job_id, status_after)


@dataclass(slots=True)
class Row:
    """One line of the main table: a reference loop or a bridge mode, on the same fleet."""

    name: str
    jobs: int
    polls_per_s: float
    cpu_us_per_poll: float
    cores: float  # CPU seconds per second
    requests_per_job_min: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    matched: int | None = None  # ground-truth changes matched to a committed event
    changes: int | None = None  # ground-truth changes in the window
    rss_mb: float | None = None
    kb_per_job: float | None = None
    burst_events_per_s: float | None = None
    burst_txn_per_s: float | None = None
    instances: int = 1
    poll_split: list[float] = field(default_factory=list)  # share of polls per instance
    interval_s: float | None = None
    errors: int = 0

    def as_dict(self) -> JsonDict:
        return asdict(self)


@dataclass(slots=True)
class SweepPoint:
    """One size of the scaling sweep (list mode unless ``mode`` says otherwise)."""

    jobs: int
    projects: int
    mode: str
    interval_s: float
    cores: float
    rss_mb: float
    kb_per_job: float
    requests_per_job_min: float
    polls_per_s: float

    @property
    def us_per_job_sweep(self) -> float:
        """CPU µs per job per sweep: flat when cost grows linearly with jobs."""
        return self.cores * self.interval_s / self.jobs * 1e6 if self.jobs else math.nan

    def as_dict(self) -> JsonDict:
        return {**asdict(self), "us_per_job_sweep": self.us_per_job_sweep}


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue: met, not met, or not measured in this run."""

    name: str
    figure: str
    met: bool | None  # None: not measured

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def observable(changes: Sequence[Mapping[str, Any]], stable_ms: int) -> list[Mapping[str, Any]]:
    """The changes whose state lasted ``stable_ms`` before the job changed again.

    Polling cannot see a state that came and went between two polls, so only a change that
    stood for at least one interval (plus jitter) can be asked of the bridge; the others
    show up, if at all, folded into a later event (flagged ``possibly_missed``).
    Changes are taken in log order (``seq``): one step may change a job twice in the same
    millisecond, and the first of the two was never visible.
    """
    changes = sorted(changes, key=lambda c: int(c.get("seq", 0)))  # stable: log order kept
    following: dict[int, int] = {}  # index -> time of the same job's next change
    last: dict[tuple[str, int], int] = {}
    for index, change in enumerate(changes):
        job = (str(change["project_id"]), int(change["job_id"]))
        if job in last:
            following[last[job]] = int(change["at"])
        last[job] = index
    out = []
    for index, change in enumerate(changes):
        after = following.get(index)
        if after is None or after - int(change["at"]) >= stable_ms:
            out.append(change)
    return out


def latencies(
    changes: Iterable[Mapping[str, Any]], commits: Iterable[tuple[EventKey, int]]
) -> list[float]:
    """Milliseconds from each ground-truth change to the commit of the event that shows it.

    ``changes`` are /_sim/changes entries; ``commits`` are (key, record timestamp ms) of
    committed events. A change is shown by the first event of its job with its
    ``status_after`` stamped after it. Unmatched changes are left out (the caller counts them).
    """
    by_key: dict[EventKey, list[int]] = {}
    for key, ts in commits:
        by_key.setdefault(key, []).append(ts)
    for stamps in by_key.values():
        stamps.sort()
    out: list[float] = []
    for change in changes:
        key = (str(change["project_id"]), int(change["job_id"]), change["status_after"])
        found = by_key.get(key, [])
        at = int(change["at"])
        i = bisect.bisect_left(found, at)
        if i < len(found):
            out.append(float(found[i] - at))
    return out


# --- text ------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return format(value, fmt)


_COLUMNS: tuple[tuple[str, int, Callable[[Row], str]], ...] = (
    ("row", 18, lambda r: r.name),
    ("jobs", 7, lambda r: str(r.jobs)),
    ("polls/s", 9, lambda r: _num(r.polls_per_s, ",.0f")),
    ("µs CPU/poll", 12, lambda r: _num(r.cpu_us_per_poll, ",.1f")),
    ("cores", 6, lambda r: _num(r.cores, ".3f")),
    ("req/job/min", 12, lambda r: _num(r.requests_per_job_min, ".3f")),
    ("p50 ms", 8, lambda r: _num(r.p50_ms, ",.0f")),
    ("p99 ms", 8, lambda r: _num(r.p99_ms, ",.0f")),
    ("matched", 11, lambda r: "-" if r.changes is None else f"{r.matched}/{r.changes}"),
    ("RSS MB", 7, lambda r: _num(r.rss_mb, ".1f")),
    ("KB/job", 7, lambda r: _num(r.kb_per_job, ".2f")),
    ("burst ev/s", 11, lambda r: _num(r.burst_events_per_s, ",.0f")),
    ("txn/s", 7, lambda r: _num(r.burst_txn_per_s, ",.1f")),
)


def table(rows: Sequence[Row]) -> str:
    """The main table, plain text, one row per line."""
    head = "  ".join(
        f"{name:>{width}}" if i else f"{name:<{width}}"
        for i, (name, width, _) in enumerate(_COLUMNS)
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = [
            f"{fn(row):>{width}}" if i else f"{fn(row):<{width}}"
            for i, (_, width, fn) in enumerate(_COLUMNS)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def sweep_table(points: Sequence[SweepPoint]) -> str:
    """The scaling sweep: cost at each fleet size, with a bar of CPU µs per job per sweep."""
    head = (
        f"{'mode':<6} {'jobs':>8} {'projects':>8} {'cores':>7} {'RSS MB':>8} {'KB/job':>7} "
        f"{'req/job/min':>11} {'µs/job/sweep':>12}"
    )
    lines = [head, "-" * len(head)]
    widest = max((p.us_per_job_sweep for p in points), default=1.0) or 1.0
    for p in points:
        bar = "#" * max(1, round(20 * p.us_per_job_sweep / widest))
        lines.append(
            f"{p.mode:<6} {p.jobs:>8,} {p.projects:>8} {p.cores:>7.3f} {p.rss_mb:>8.1f} "
            f"{p.kb_per_job:>7.2f} {p.requests_per_job_min:>11.3f} "
            f"{p.us_per_job_sweep:>12.1f} {bar}"
        )
    return "\n".join(lines)


# --- targets ---------------------------------------------------------------------------------


def _find(rows: Sequence[Row], name: str) -> Row | None:
    return next((r for r in rows if r.name == name), None)


def _detail_target(rows: Sequence[Row]) -> Target:
    """Against the bare loop and the SDK loop on the bridge's own schedule (the same requests
    at the same rate): measured beside the bridge (the same seconds) when the run has those
    rows, else before it; the other pacings are shown beside the verdict."""
    name = "detail CPU/poll ≤ 1.3 x bare and ≤ 0.1 x SDK"
    bridge = _find(rows, "bridge detail")
    beside = _find(rows, "bare paced (beside)"), _find(rows, "sdk paced (beside)")
    before = _find(rows, "bare paced"), _find(rows, "sdk paced")
    flat = _find(rows, "bare loop"), _find(rows, "sdk loop")
    bare, sdk = beside if None not in beside else before
    if bridge is None or bare is None or sdk is None:
        return Target(name, "needs the bridge detail row and the paced loop rows", None)
    us = bridge.cpu_us_per_poll
    parts = [f"{us:.0f} µs"]
    for label, (a, b) in (("beside it", beside), ("before it", before), ("flat out", flat)):
        if a is not None and b is not None:
            parts.append(
                f"{label} {us / a.cpu_us_per_poll:.2f} x bare ({a.cpu_us_per_poll:.0f} µs),"
                f" {us / b.cpu_us_per_poll:.3f} x SDK ({b.cpu_us_per_poll:.0f} µs)"
            )
    met = us / bare.cpu_us_per_poll <= 1.3 and us / sdk.cpu_us_per_poll <= 0.1
    return Target(name, "; ".join(parts), met)


def _memory_target(points: Sequence[SweepPoint], rows: Sequence[Row]) -> Target:
    name = "≤ 3 KB resident per tracked job at 50,000 jobs"
    at = [p for p in points if p.mode == "list" and p.jobs >= 50_000]
    if at:
        p = min(at, key=lambda p: p.jobs)
        return Target(name, f"{p.kb_per_job:.2f} KB/job at {p.jobs:,} jobs", p.kb_per_job <= 3)
    sized = [r for r in rows if r.kb_per_job is not None]
    if not sized:
        return Target(name, "no memory figure", None)
    r = max(sized, key=lambda r: r.jobs)
    return Target(name, f"{r.kb_per_job:.2f} KB/job at only {r.jobs:,} jobs (run --sweep)", None)


def _list_targets(points: Sequence[SweepPoint]) -> list[Target]:
    big = [p for p in points if p.mode == "list" and p.jobs >= 100_000]
    swept = [p for p in points if p.mode == "sweep" and p.jobs >= 100_000]
    out = []
    name = "list: 100k jobs / 30 s on < 0.2 core, ≤ 0.15 req/job/min"
    if big:
        p = big[0]
        figure = f"{p.cores:.3f} cores, {p.requests_per_job_min:.3f} req/job/min at {p.jobs:,}"
        out.append(Target(name, figure, p.cores < 0.2 and p.requests_per_job_min <= 0.15))
    else:
        out.append(Target(name, "run --sweep with a 100,000-job size", None))
    name = "sweep mode: ≤ 0.03 req/job/min at 100k / 30 s"
    if swept:
        p = swept[0]
        figure = f"{p.requests_per_job_min:.4f} req/job/min ({p.cores:.3f} cores)"
        out.append(Target(name, figure, p.requests_per_job_min <= 0.03))
    else:
        out.append(Target(name, "run --sweep with a 100,000-job size", None))
    return out


def _latency_targets(rows: Sequence[Row]) -> list[Target]:
    out = []
    for r in rows:
        if r.p99_ms is None or r.interval_s is None:
            continue
        bound = r.interval_s * 1000 + 200
        figure = f"p99 {r.p99_ms:,.0f} ms vs {bound:,.0f} ms (p50 {_num(r.p50_ms, ',.0f')} ms)"
        out.append(
            Target(f"{r.name}: change-to-commit p99 ≤ interval + 200 ms", figure, r.p99_ms <= bound)
        )
    return out


def _linear_target(points: Sequence[SweepPoint]) -> Target:
    name = "linear: CPU per job per sweep at 100k ≤ 1.5 x at 10k"
    by_jobs = {p.jobs: p for p in points if p.mode == "list"}
    small, big = by_jobs.get(10_000), by_jobs.get(100_000)
    if small is None or big is None:
        return Target(name, "run --sweep with 10,000 and 100,000", None)
    ratio = big.us_per_job_sweep / small.us_per_job_sweep
    figure = f"{big.us_per_job_sweep:.1f} µs vs {small.us_per_job_sweep:.1f} µs = {ratio:.2f} x"
    return Target(name, figure, ratio <= 1.5)


def _scale_out_target(rows: Sequence[Row]) -> Target:
    name = "3 instances: each 33 % ± 10 % of polls, CPU/poll summed ≤ 1.1 x one instance"
    many = next((r for r in rows if r.instances == 3), None)
    # the one instance measured just before them, on the same fleet (older runs: the list row)
    one = _find(rows, "bridge list x1") or _find(rows, "bridge list")
    if many is None or one is None:
        return Target(name, "not run (needs --instances 3)", None)
    even = all(abs(share - 1 / 3) <= 0.10 for share in many.poll_split)
    ratio = many.cpu_us_per_poll / one.cpu_us_per_poll
    split = ", ".join(f"{s:.0%}" for s in many.poll_split)
    return Target(name, f"split {split}; CPU/poll {ratio:.2f} x one", even and ratio <= 1.1)


def targets(rows: Sequence[Row], points: Sequence[SweepPoint]) -> list[Target]:
    """Every target of the benchmark issue, judged on this run's figures."""
    return [
        _detail_target(rows),
        _memory_target(points, rows),
        *_list_targets(points),
        *_latency_targets(rows),
        _linear_target(points),
        _scale_out_target(rows),
    ]


def targets_text(found: Sequence[Target]) -> str:
    width = max((len(t.name) for t in found), default=10)
    return "\n".join(f"{t.verdict:<12} {t.name:<{width}}  {t.figure}" for t in found)
