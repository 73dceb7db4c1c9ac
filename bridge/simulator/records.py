"""The simulator's values: its config, a compact Job, its SimProject, a ListQuery, a TruthEntry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from bridge.errors import ConfigError
from bridge.lifecycle import JobStatus
from bridge.models import JsonDict

__all__ = [
    "FLAG_KNOBS",
    "MAX_CHANGE_RATE",
    "MAX_LATENCY_S",
    "Job",
    "ListQuery",
    "SimProject",
    "SimRejected",
    "SimulatorConfig",
    "TruthEntry",
    "fault_problems",
]

FLAG_KNOBS = ("checkpoint_enabled", "log_enabled", "restart_when_exception", "resume_checkpoint")
_FLAG_BITS = {knob: 1 << i for i, knob in enumerate(FLAG_KNOBS)}
# Bounds of the knobs a user sets (documented in `dli-bridge simulate --help`): beyond them the
# walk would starve the server, or every call would hang.
MAX_CHANGE_RATE = 10_000.0  # changes per second across the fleet
MAX_LATENCY_S = 60.0


def _between(name: str, value: float, low: float, high: float) -> list[str]:
    if math.isfinite(value) and low <= value <= high:
        return []
    return [f"{name} must be a number between {low:g} and {high:g} (got {value!r})"]


def fault_problems(
    *,
    latency_s: float | None = None,
    error_rate: float | None = None,
    malformed_rate: float | None = None,
    throttle_per_s: float | None = None,
) -> list[str]:
    """What is wrong with these fault settings (None = not given); empty when all are fine.

    ``throttle_per_s`` 0 is allowed here: for ``set_faults`` it means "throttling off".
    """
    problems: list[str] = []
    if latency_s is not None:
        problems += _between("latency_s", latency_s, 0.0, MAX_LATENCY_S)
    for name, rate in (("error_rate", error_rate), ("malformed_rate", malformed_rate)):
        if rate is not None:
            problems += _between(name, rate, 0.0, 1.0)
    if throttle_per_s is not None and not (math.isfinite(throttle_per_s) and throttle_per_s >= 0):
        problems.append(f"throttle_per_s must be a finite rate (got {throttle_per_s!r})")
    return problems


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulator serves and how badly it behaves. Credentials never show in repr.

    With no ``aksk`` and no ``users`` no call needs authentication. Invalid values raise
    ``bridge.errors.ConfigError`` listing every problem: the config is user input, read at
    the edge (``dli-bridge simulate`` turns it into exit status 2).
    """

    projects: int = 3
    jobs_per_project: int = 10
    seed: int = 0
    change_rate: float = 0.0  # expected changes per second across the fleet; 0 = by hand only
    aksk: Mapping[str, str] = field(default_factory=dict, repr=False)  # AK -> SK
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # user -> password
    domain: str = "sim-domain"
    token_ttl_s: float = 86400.0
    throttle_per_s: float | None = None  # per-project rate; above it 429 APIG.0308
    retry_after: bool = True  # whether 429s carry Retry-After
    latency_s: float = 0.0
    error_rate: float = 0.0  # fraction of DLI calls answered 5xx
    malformed_rate: float = 0.0  # fraction of DLI calls answered 200 with a broken body
    region: str = "sim-1"
    # What a list's `total_count` counts: every match (as DLI's doc example suggests), or
    # only the rows of the page (the other reading of its one-line description).
    total_count: Literal["all", "page"] = "all"

    def __post_init__(self) -> None:
        problems = fault_problems(
            latency_s=self.latency_s,
            error_rate=self.error_rate,
            malformed_rate=self.malformed_rate,
        )
        problems += _between("change_rate", self.change_rate, 0.0, MAX_CHANGE_RATE)
        if self.total_count not in ("all", "page"):
            problems.append(f"total_count must be 'all' or 'page' (got {self.total_count!r})")
        problems += [
            f"{name} must not be negative"
            for name in ("projects", "jobs_per_project")
            if getattr(self, name) < 0
        ]
        if self.throttle_per_s is not None and not (
            math.isfinite(self.throttle_per_s) and self.throttle_per_s > 0
        ):
            problems.append(
                f"throttle_per_s must be a positive rate (got {self.throttle_per_s!r}); "
                "leave it out for no throttling"
            )
        if not (math.isfinite(self.token_ttl_s) and self.token_ttl_s > 0):
            problems.append("token_ttl_s must be positive")
        if self.change_rate > 0 and self.projects == 0:
            problems.append("change_rate needs at least one project to change")
        if problems:
            raise ConfigError("invalid simulator configuration", problems)


class SimRejected(Exception):
    """The simulator refuses a request or a control call; its server answers it as a 4xx.

    The simulator's own control-flow exception (it never raises the bridge's errors, which
    describe what the *client* saw). ``code`` is the DLI/APIG error code of the answer.
    """

    def __init__(self, message: str, *, status: int = 400, code: str = "DLI.0001") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return f"<SimRejected {self.status} {self.code} {self.message!r}>"


@dataclass(frozen=True, slots=True)
class TruthEntry:
    """One ground-truth change the simulator made, in the order it made them."""

    seq: int
    project_id: str
    job_id: int
    kind: str  # created | status_changed | updated | deleted
    status_before: str | None
    status_after: str | None
    at: int  # ms epoch

    def as_dict(self) -> JsonDict:
        return asdict(self)


@dataclass(slots=True, eq=False)
class SimProject:
    """A DLI project: its identity, the users and queues its jobs use, and its jobs by id."""

    id: str
    name: str
    users: Mapping[str, str]  # user name -> user id
    queues: tuple[str, ...]
    jobs: dict[int, Job] = field(default_factory=dict)
    _order: list[Job] | None = None

    def ordered(self) -> list[Job]:
        """Jobs by (create_time, job_id) ascending; cached until a job is added or removed."""
        if self._order is None:
            self._order = sorted(self.jobs.values(), key=lambda j: (j.create_time, j.job_id))
        return self._order

    def invalidate(self) -> None:
        self._order = None


@dataclass(slots=True, eq=False)
class Job:
    """One Flink job kept compact (100k of them must fit easily); JSON is rendered on request."""

    job_id: int
    project: SimProject
    name: str
    desc: str
    job_type: str
    status: JobStatus
    create_time: int
    update_time: int
    user_name: str
    queue_name: str
    variant: int  # picks the SQL text, jar, Flink version...: shared strings, no copies
    status_desc: str = ""
    start_time: int | None = None
    end_time: int | None = None  # when it last stopped running; freezes `duration`
    run_mode: str = "shared_cluster"
    restart_times: int = 0
    savepoint_at: int | None = None
    cu_number: int = 2
    parallel_number: int = 1
    checkpoint_interval: int = 10
    flags: int = 0  # bit i = FLAG_KNOBS[i]
    root_id: int = -1
    tags: tuple[tuple[str, str], ...] = ()
    secret_rev: int = 0  # how often its JDBC password was rotated (render.jdbc_password)
    extra: JsonDict | None = None  # hand-set fields that have no slot of their own
    slot: int = -1  # position in Fleet._all, for O(1) random picks and removal

    def flag(self, knob: str) -> bool:
        return bool(self.flags & _FLAG_BITS[knob])

    def set_flag(self, knob: str, on: bool) -> None:
        bit = _FLAG_BITS[knob]
        self.flags = self.flags | bit if on else self.flags & ~bit

    def duration(self, now_ms: int) -> int:
        if self.start_time is None:
            return 0
        return max(0, (self.end_time or now_ms) - self.start_time)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters, order and page of one list call (already validated)."""

    job_type: str | None = None
    status: str | None = None
    queue_name: str | None = None
    name: str | None = None  # substring match, case-sensitive
    user_name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    root_job_id: int | None = None
    order: str = "desc"
    offset: int = 0
    limit: int = 10
    show_detail: bool = False

    @property
    def unfiltered(self) -> bool:
        filters = (self.job_type, self.status, self.queue_name, self.name, self.user_name)
        return self.root_job_id is None and not self.tags and all(f is None for f in filters)

    def matches(self, job: Job) -> bool:
        # Without root_job_id DLI leaves edge child jobs out (SDK docs); with it, only them.
        root = -1 if self.root_job_id is None else self.root_job_id
        return (
            job.root_id == root
            and (self.job_type is None or job.job_type == self.job_type)
            and (self.status is None or job.status == self.status)
            and (self.queue_name is None or job.queue_name == self.queue_name)
            and (self.name is None or self.name in job.name)
            and (self.user_name is None or job.user_name == self.user_name)
            and all(pair in job.tags for pair in self.tags)
        )
