"""The simulated fleet's records: a compact Job, its Project, a ListQuery over jobs, a Change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from bridge.lifecycle import JobStatus
from bridge.models import JsonDict

__all__ = ["FLAG_KNOBS", "Change", "Job", "JsonDict", "ListQuery", "Project"]

FLAG_KNOBS = ("checkpoint_enabled", "log_enabled", "restart_when_exception", "resume_checkpoint")
_FLAG_BITS = {knob: 1 << i for i, knob in enumerate(FLAG_KNOBS)}


@dataclass(frozen=True, slots=True)
class Change:
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
class Project:
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
    project: Project
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
