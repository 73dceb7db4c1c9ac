"""The simulator's in-memory DLI fleet: compact job records, the seeded status walk, JSON rows."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from bridge.errors import ConfigError, JobNotFound
from bridge.lifecycle import JobStatus

__all__ = [
    "WALK",
    "Change",
    "Fleet",
    "Job",
    "ListQuery",
    "Project",
    "as_status",
    "detail",
    "detail_row",
    "job_config",
    "light_row",
]

S = JobStatus
T = TypeVar("T")
JsonDict = dict[str, Any]

JOB_TYPES = ("flink_opensource_sql_job", "flink_jar_job", "flink_sql_job")
_JOB_TYPES_WEIGHTED = (JOB_TYPES[0],) * 6 + (JOB_TYPES[1],) * 3 + (JOB_TYPES[2],)
# Start-up statuses: mostly running, some stopped, a few in every other status.
_INITIAL_STATUSES = tuple(JobStatus)
_INITIAL_WEIGHTS = (5, 2, 3, 55, 5, 1, 2, 2, 12, 2, 2, 2, 1, 4)  # in JobStatus order
_RUN_MODES_WEIGHTED = ("shared_cluster",) * 2 + ("exclusive_cluster",) * 8 + ("edge_node",)
# The seeded walk: weighted next statuses, every edge taken from lifecycle.TRANSITIONS.
WALK: Mapping[JobStatus, tuple[tuple[JobStatus, int], ...]] = {
    S.INIT: ((S.SUBMITTING, 1),),
    S.SUBMITTING: ((S.RUNNING, 8), (S.SUBMIT_FAIL, 1), (S.DOWNLOADING, 1)),
    S.DOWNLOADING: ((S.RUNNING, 3), (S.SUBMIT_FAIL, 1)),
    S.SUBMIT_FAIL: ((S.SUBMITTING, 1),),
    S.RUNNING: (
        (S.SAVEPOINTING, 3),
        (S.CANCELING, 3),
        (S.RUNNING_EXCEPTION, 3),
        (S.IDLE, 1),
        (S.FINISH, 1),
        (S.ARREARAGE_STOPPED, 1),
    ),
    S.IDLE: ((S.RUNNING, 3), (S.CANCELING, 1)),
    S.RUNNING_EXCEPTION: ((S.RUNNING, 3), (S.SUBMITTING, 1)),
    S.SAVEPOINTING: ((S.RUNNING, 4), (S.CANCEL_SUCCESS, 1)),
    S.CANCELING: ((S.CANCEL_SUCCESS, 5), (S.CANCEL_FAIL, 1)),
    S.CANCEL_FAIL: ((S.RUNNING, 1), (S.CANCELING, 1)),
    S.CANCEL_SUCCESS: ((S.SUBMITTING, 1),),
    S.FINISH: ((S.SUBMITTING, 1),),
    S.ARREARAGE_STOPPED: ((S.ARREARAGE_RECOVERING, 1),),
    S.ARREARAGE_RECOVERING: ((S.RUNNING, 1),),
}
_KINDS = ("status_changed", "updated", "created", "deleted")
_KIND_WEIGHTS = (70, 20, 5, 5)
_RUNNING_LIKE = frozenset({S.RUNNING, S.IDLE, S.SAVEPOINTING, S.CANCELING, S.CANCEL_FAIL})
_STATUS_DESC: Mapping[JobStatus, tuple[str, ...]] = {
    S.RUNNING_EXCEPTION: (
        "Job failed: org.apache.flink.runtime.JobException: Recovery is suppressed by "
        "NoRestartBackoffTimeStrategy",
        "Job failed: java.lang.OutOfMemoryError: Java heap space",
    ),
    S.SUBMIT_FAIL: (
        "Submit failed: the queue has insufficient CUs",
        "Submit failed: SQL syntax error",
    ),
    S.ARREARAGE_STOPPED: ("The job is stopped because the account is in arrears.",),
}
_USERS = ("dli_admin", "etl_ops", "stream_dev", "analytics", "data_eng", "ops_robot")
_QUEUES = ("flinktest", "default", "stream_queue", "rt_analytics", "etl_exclusive", "general_q1")
_TAGS: tuple[tuple[tuple[str, str], ...], ...] = (
    (), (("env", "prod"),), (("env", "test"),), (("env", "prod"), ("team", "payments")),
    (("team", "growth"),),
)  # fmt: skip
_SUBJECTS = ("orders", "clicks", "payments", "inventory", "sessions", "iot_metrics", "fraud")
_ACTIONS = ("etl", "agg", "sync", "enrich", "dedup", "alerts", "sink", "join")
_DESCS = ("", "", "Realtime aggregation for the dashboard", "Kafka to DWS sync", "Nightly backfill")
_SQL = (
    "CREATE TABLE src (id BIGINT, amount DOUBLE) WITH ('connector' = 'kafka', 'topic' = 'orders');"
    "\nCREATE TABLE dst (id BIGINT, total DOUBLE) WITH ('connector' = 'dws');"
    "\nINSERT INTO dst SELECT id, SUM(amount) FROM src GROUP BY id;",
    "CREATE TABLE clicks (url STRING, ts TIMESTAMP(3)) WITH ('connector' = 'dis');"
    "\nINSERT INTO print_sink SELECT url, COUNT(*) FROM clicks GROUP BY url, "
    "TUMBLE(ts, INTERVAL '1' MINUTE);",
)
_MAIN_CLASSES = ("com.example.flink.OrdersJob", "org.apache.flink.examples.WordCount")
_JARS = ("FemaleInfoCollection.jar", "stream-etl-1.4.2.jar", "flink-cdc-job.jar")
_FLINK_VERSIONS = ("1.15", "1.12", "1.17")
_CONFIG_KNOBS = ("cu_number", "parallel_number", "checkpoint_interval")
_KNOB_VALUES: Mapping[str, tuple[int, ...]] = {
    "cu_number": (2, 4, 8, 16, 32),
    "parallel_number": (1, 2, 4, 6, 12),
    "checkpoint_interval": (10, 30, 60, 120, 600),
}
_FLAG_KNOBS = ("checkpoint_enabled", "log_enabled", "restart_when_exception", "resume_checkpoint")
_FLAG_BITS = {knob: 1 << i for i, knob in enumerate(_FLAG_KNOBS)}
_SLOT_FIELDS = frozenset(
    {"name", "desc", "job_type", "status_desc", "create_time", "start_time", "user_name",
     "queue_name", "run_mode", "restart_times", "root_id", "update_time"}
)  # fmt: skip
_FIXED_FIELDS = frozenset({"job_id", "project_id", "status"})
_DAY_MS = 86_400_000


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
    flags: int = 0  # bit i = _FLAG_KNOBS[i]
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


def as_status(value: str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise ConfigError(f"unknown job status {value!r}") from None


class _Digits:
    """Mixed-radix digits of one random number: each ``take`` picks from its own options."""

    def __init__(self, value: int) -> None:
        self.value = value

    def take(self, options: Sequence[T]) -> T:
        self.value, index = divmod(self.value, len(options))
        return options[index]


def _hex32(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


class Fleet:
    """Every project and job, the seeded random walk over them, and the change log.

    Pure: no clock and no I/O; callers pass ``now_ms``. The same seed and the same sequence
    of calls give the same jobs and the same changes.
    """

    def __init__(
        self, *, projects: int, jobs_per_project: int, seed: int, region: str, now_ms: int
    ) -> None:
        self.rng = random.Random(f"{seed}/fleet")
        self.region = region
        self.domain_id = _hex32(self.rng)
        self.projects: dict[str, Project] = {}
        self.log: list[Change] = []
        self._all: list[Job] = []
        self._next_id = 10_000 + self.rng.randrange(90_000)
        for index in range(projects):
            self._seed_project(index, jobs_per_project, now_ms)

    # --- set-up ------------------------------------------------------------------------------

    def _seed_project(self, index: int, jobs: int, now_ms: int) -> None:
        rng = self.rng
        name = self.region if index == 0 else f"{self.region}_proj{index:03d}"
        users = {u: _hex32(rng) for u in rng.sample(_USERS, rng.randint(1, 3))}
        project = Project(_hex32(rng), name, users, tuple(rng.sample(_QUEUES, rng.randint(1, 3))))
        self.projects[project.id] = project
        created = sorted(now_ms - rng.randrange(180 * _DAY_MS) for _ in range(jobs))
        for create_time in created:
            status = rng.choices(_INITIAL_STATUSES, _INITIAL_WEIGHTS)[0]
            job = self._new_job(project, create_time, status)
            job.update_time = create_time + rng.randrange(max(1, now_ms - create_time))
            self._age(job, now_ms)
            self._add(job, now_ms)

    def _age(self, job: Job, now_ms: int) -> None:
        """Give a start-up job the history its status implies (start, restarts, savepoint)."""
        rng = self.rng
        job.status_desc = self._status_desc(job.status)
        if job.status in (S.INIT, S.SUBMIT_FAIL) or (
            job.status is S.SUBMITTING and rng.random() < 0.5
        ):
            return
        job.start_time = job.create_time + rng.randrange(max(1, (now_ms - job.create_time) // 2))
        if job.status not in _RUNNING_LIKE:
            job.end_time = job.start_time + rng.randrange(max(1, now_ms - job.start_time))
        if job.flag("restart_when_exception"):
            job.restart_times = rng.choice((0, 0, 0, 1, 2, 5))
        if rng.random() < 0.3:
            job.savepoint_at = job.start_time + rng.randrange(1, 3_600_000)

    def _new_job(self, project: Project, now_ms: int, status: JobStatus, **fields: Any) -> Job:
        # One 64-bit draw per job, split into digits, keeps start-up of 100k jobs fast.
        bits = _Digits(self.rng.getrandbits(64))
        job_id, self._next_id = self._next_id, self._next_id + 1
        job = Job(
            job_id=job_id,
            project=project,
            name=f"{bits.take(_SUBJECTS)}_{bits.take(_ACTIONS)}_{job_id}",
            desc=bits.take(_DESCS),
            job_type=bits.take(_JOB_TYPES_WEIGHTED),
            status=status,
            create_time=now_ms,
            update_time=now_ms,
            user_name=bits.take(tuple(project.users)),
            queue_name=bits.take(project.queues),
            variant=bits.take(range(6)),
            run_mode=bits.take(_RUN_MODES_WEIGHTED),
            cu_number=bits.take((2, 2, 4, 8, 16)),
            parallel_number=bits.take((1, 1, 2, 3, 4, 8)),
            checkpoint_interval=bits.take((10, 30, 60, 600)),
            flags=bits.take(range(16)),
            tags=bits.take(_TAGS),
        )
        self._apply_fields(job, fields)
        return job

    # --- mutations (each records its Change) ---------------------------------------------------

    def _record(
        self, job: Job, kind: str, before: str | None, after: str | None, at: int
    ) -> Change:
        change = Change(len(self.log) + 1, job.project.id, job.job_id, kind, before, after, at)
        self.log.append(change)
        return change

    def _add(self, job: Job, now_ms: int) -> Change:
        job.project.jobs[job.job_id] = job
        job.project.invalidate()
        job.slot = len(self._all)
        self._all.append(job)
        return self._record(job, "created", None, str(job.status), now_ms)

    def project(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise JobNotFound(f"no project {project_id}", project_id=project_id)
        return project

    def get(self, project_id: str, job_id: int) -> Job:
        job = self.project(project_id).jobs.get(job_id)
        if job is None:
            message = f"no job {job_id} in project {project_id}"
            raise JobNotFound(message, job_id=job_id, project_id=project_id)
        return job

    def create(self, project_id: str, now_ms: int, **fields: Any) -> Change:
        status = as_status(fields.pop("status", S.INIT))
        job = self._new_job(self.project(project_id), now_ms, status, **fields)
        return self._add(job, now_ms)

    def set_status(self, project_id: str, job_id: int, status: str, now_ms: int) -> Change:
        job = self.get(project_id, job_id)
        before, target = job.status, as_status(status)
        self._enter(job, target, now_ms)
        return self._record(job, "status_changed", before, target, now_ms)

    def update(self, project_id: str, job_id: int, now_ms: int, **fields: Any) -> Change:
        job = self.get(project_id, job_id)
        self._apply_fields(job, fields)
        if "update_time" not in fields:
            job.update_time = max(now_ms, job.update_time + 1)
        return self._record(job, "updated", job.status, job.status, now_ms)

    def delete(self, project_id: str, job_id: int, now_ms: int) -> Change:
        job = self.get(project_id, job_id)
        del job.project.jobs[job_id]
        job.project.invalidate()
        last = self._all.pop()
        if last is not job:
            self._all[job.slot] = last
            last.slot = job.slot
        return self._record(job, "deleted", job.status, None, now_ms)

    def _apply_fields(self, job: Job, fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            if key in _FIXED_FIELDS:
                raise ConfigError(f"job field {key!r} cannot be set by hand this way")
            if key == "job_config":
                self._apply_config(job, value)
            elif key == "tags":
                job.tags = tuple(sorted(dict(value).items()))
            elif key in _SLOT_FIELDS:
                setattr(job, key, value)
            else:
                job.extra = {**(job.extra or {}), key: value}
        if "create_time" in fields:
            job.project.invalidate()

    def _apply_config(self, job: Job, config: Mapping[str, Any]) -> None:
        rest = dict(config)
        for knob in _CONFIG_KNOBS:
            if knob in rest:
                setattr(job, knob, int(rest.pop(knob)))
        for knob in _FLAG_KNOBS:
            if knob in rest:
                job.set_flag(knob, bool(rest.pop(knob)))
        if rest:
            extra = job.extra or {}
            job.extra = {**extra, "job_config": {**extra.get("job_config", {}), **rest}}

    def _status_desc(self, status: JobStatus) -> str:
        texts = _STATUS_DESC.get(status)
        return self.rng.choice(texts) if texts else ""

    def _enter(self, job: Job, target: JobStatus, now_ms: int) -> None:
        """Move a job to ``target`` with the side effects DLI shows for that move."""
        before = job.status
        if target is S.RUNNING and before is S.RUNNING_EXCEPTION:
            job.restart_times += 1  # restart_when_exception: an automatic restart
            job.end_time = None
        elif target is S.RUNNING and before not in _RUNNING_LIKE:
            job.start_time, job.end_time = now_ms, None
        elif target not in _RUNNING_LIKE and target is not S.SUBMITTING and job.end_time is None:
            job.end_time = now_ms if job.start_time is not None else None
        if before is S.SAVEPOINTING and target in (S.RUNNING, S.CANCEL_SUCCESS):
            job.savepoint_at = now_ms
        job.status = target
        job.status_desc = self._status_desc(target)

    # --- the seeded walk -----------------------------------------------------------------------

    def step(self, changes: int, now_ms: int) -> list[Change]:
        """Make ``changes`` random changes: status moves, edits, creations and deletions."""
        return [self._one_step(now_ms) for _ in range(changes)]

    def _one_step(self, now_ms: int) -> Change:
        if not self.projects:
            raise ConfigError("a fleet without projects cannot change")
        kind = self.rng.choices(_KINDS, _KIND_WEIGHTS)[0] if self._all else "created"
        if kind == "created":
            project = self.rng.choice(list(self.projects.values()))
            return self.create(project.id, now_ms)
        job = self._all[self.rng.randrange(len(self._all))]
        if kind == "deleted":
            return self.delete(job.project.id, job.job_id, now_ms)
        if kind == "updated":
            return self.update(job.project.id, job.job_id, now_ms, **self._random_edit(job))
        return self.set_status(job.project.id, job.job_id, self._next_status(job), now_ms)

    def _next_status(self, job: Job) -> JobStatus:
        moves = WALK[job.status]
        if job.status is S.RUNNING_EXCEPTION and not job.flag("restart_when_exception"):
            moves = tuple(m for m in moves if m[0] is not S.RUNNING)
        targets, weights = zip(*moves, strict=True)
        target: JobStatus = self.rng.choices(targets, weights)[0]
        return target

    def _random_edit(self, job: Job) -> JsonDict:
        rng = self.rng
        match rng.randrange(4):
            case 0:
                return {"name": f"{rng.choice(_SUBJECTS)}_{rng.choice(_ACTIONS)}_{job.job_id}_v2"}
            case 1:
                return {"desc": rng.choice([d for d in _DESCS if d != job.desc])}
            case 2:
                knob = rng.choice(_CONFIG_KNOBS)
                old = getattr(job, knob)
                options = [v for v in _KNOB_VALUES[knob] if v != old]
                return {"job_config": {knob: rng.choice(options)}}
            case _:
                knob = rng.choice(_FLAG_KNOBS)
                return {"job_config": {knob: not job.flag(knob)}}

    # --- queries -----------------------------------------------------------------------------

    def query(self, project_id: str, q: ListQuery) -> tuple[int, list[Job]]:
        """Total matches and the page of jobs for one list call."""
        ordered = self.project(project_id).ordered()
        rows: Iterator[Job] = reversed(ordered) if q.order == "desc" else iter(ordered)
        if q.unfiltered:
            matches = [job for job in rows if job.root_id == -1]  # the common call, made fast
        else:
            matches = [job for job in rows if q.matches(job)]
        return len(matches), matches[q.offset : q.offset + q.limit]

    def __len__(self) -> int:
        return len(self._all)


# --- JSON as DLI renders it -------------------------------------------------------------------

_EXECUTION_GRAPH = '{"nodes":[{"id":1,"operator":"Source: src"},{"id":2,"operator":"Sink: dst"}]}'
_LIGHT_KEYS = frozenset({"user_name", "duration", "root_id"})
_DETAIL_ROW_KEYS = frozenset(
    {"user_id", "project_id", "sql_body", "run_mode", "job_config", "main_class",
     "entrypoint_args", "execution_graph", "update_time"}
)  # fmt: skip
_SHAPED = _LIGHT_KEYS | _DETAIL_ROW_KEYS


def _common(job: Job) -> JsonDict:
    """Fields every shape carries (list rows with or without show_detail, and the detail)."""
    savepoint = job.savepoint_at
    return {
        "job_id": job.job_id,
        "name": job.name,
        "desc": job.desc,
        "job_type": job.job_type,
        "status": job.status.value,
        "status_desc": job.status_desc,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "queue_name": job.queue_name,
        "graph_editor_enabled": job.job_type == "flink_sql_job" and job.variant % 2 == 0,
        "has_savepoint": savepoint is not None,
        "savepoint_path": None
        if savepoint is None
        else f"obs://{_bucket(job)}/savepoints/{job.job_id}/savepoint-{savepoint}",
        "edge_group_ids": _edge_groups(job),
        "restart_times": job.restart_times,
    }


def _bucket(job: Job) -> str:
    return f"dli-{job.project.id[:12]}"


def _edge_groups(job: Job) -> list[str] | None:
    if job.run_mode != "edge_node":
        return None
    return [f"{job.project.id[:8]}-edge-{job.variant}"]


def _with_extra(row: JsonDict, job: Job, own: frozenset[str]) -> JsonDict:
    """Hand-set fields override the rendered ones; unknown ones appear in every shape."""
    for key, value in (job.extra or {}).items():
        if key != "job_config" and (key in own or key not in _SHAPED):
            row[key] = value
    return row


def light_row(job: Job, now_ms: int) -> JsonDict:
    """A list row with ``show_detail=false`` (reference §1.3); ``start_time`` 0 = never started."""
    row = _common(job)
    row["start_time"] = job.start_time or 0
    row["user_name"] = job.user_name
    row["duration"] = job.duration(now_ms)
    row["root_id"] = job.root_id
    return _with_extra(row, job, _LIGHT_KEYS)


def detail_row(job: Job) -> JsonDict:
    """A list row with ``show_detail=true``: the detail fields, no user_name/duration/root_id."""
    row = _common(job)
    row.update(_detail_fields(job))
    return _with_extra(row, job, _DETAIL_ROW_KEYS)


def detail(job: Job) -> JsonDict:
    """``job_detail`` of the Job Details call: Tables 3 and 4 of the seed, except ``duration``
    (documented for light list rows only, and volatile)."""
    row = _common(job)
    row.update(_detail_fields(job))
    row["user_name"] = job.user_name
    row["root_id"] = job.root_id
    return _with_extra(row, job, _SHAPED - {"duration"})


def _detail_fields(job: Job) -> JsonDict:
    jar = job.job_type == "flink_jar_job"
    started = job.start_time is not None
    return {
        "user_id": job.project.users.get(job.user_name, ""),
        "project_id": job.project.id,
        "sql_body": "" if jar else _SQL[job.variant % len(_SQL)],
        "run_mode": job.run_mode,
        "job_config": job_config(job),
        "main_class": _MAIN_CLASSES[job.variant % 2] if jar else None,
        "entrypoint_args": "--env prod --window 60" if jar and job.variant % 3 == 0 else None,
        "execution_graph": _EXECUTION_GRAPH if started and not jar else None,
        "update_time": job.update_time,
    }


def job_config(job: Job) -> JsonDict:
    """Table 4: the job's configuration, from its knobs plus shared per-variant values."""
    jar, v = job.job_type == "flink_jar_job", job.variant
    checkpoint, logs = job.flag("checkpoint_enabled"), job.flag("log_enabled")
    bucket = _bucket(job)
    config: JsonDict = {
        "checkpoint_enabled": checkpoint,
        "checkpoint_interval": job.checkpoint_interval,
        "checkpoint_mode": "exactly_once" if v % 3 else "at_least_once",
        "log_enabled": logs,
        "obs_bucket": bucket if logs or checkpoint else None,
        "root_id": job.root_id,
        "edge_group_ids": _edge_groups(job),
        "manager_cu_number": 1,
        "graph_editor_enabled": False,
        "graph_editor_data": "",
        "executor_number": None,
        "executor_cu_number": None,
        "cu_number": job.cu_number,
        "parallel_number": job.parallel_number,
        "smn_topic": "dli_job_alarm" if v % 4 == 0 else None,
        "restart_when_exception": job.flag("restart_when_exception"),
        "resume_checkpoint": job.flag("resume_checkpoint"),
        "resume_max_num": -1 if job.flag("restart_when_exception") else 0,
        "checkpoint_path": f"obs://{bucket}/checkpoints/{job.job_id}" if checkpoint else None,
        "idle_state_retention": 3600,
        "config_url": None,
        "udf_jar_url": None if jar or v % 2 else "udf/flink-udf-1.0.jar",
        "dirty_data_strategy": None if jar else "0",
        "entrypoint": _JARS[v % len(_JARS)] if jar else None,
        "dependency_jars": [_JARS[(v + 1) % len(_JARS)]] if jar and v % 2 else None,
        "dependency_files": None,
        "tm_cus": 1,
        "tm_slot_num": job.parallel_number,
        "image": None,
        "feature": "basic",
        "flink_version": _FLINK_VERSIONS[v % len(_FLINK_VERSIONS)],
        "operator_config": None,
        "static_estimator_config": None,
        "runtime_config": None,
        "real_cu_number": 0,
    }
    config.update((job.extra or {}).get("job_config", {}))
    return config
