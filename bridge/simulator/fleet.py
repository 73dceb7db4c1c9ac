"""The simulator's in-memory DLI fleet: seeded projects and jobs, the random walk, the log."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from bridge.lifecycle import JobStatus
from bridge.models import JsonDict
from bridge.simulator.records import (
    FLAG_KNOBS,
    Job,
    ListQuery,
    SimProject,
    SimRejected,
    TruthEntry,
)

__all__ = ["JOB_TYPES", "WALK", "Fleet", "as_status"]

S = JobStatus
T = TypeVar("T")

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
_CONFIG_KNOBS = ("cu_number", "parallel_number", "checkpoint_interval")
_KNOB_VALUES: Mapping[str, tuple[int, ...]] = {
    "cu_number": (2, 4, 8, 16, 32),
    "parallel_number": (1, 2, 4, 6, 12),
    "checkpoint_interval": (10, 30, 60, 120, 600),
}
_SLOT_FIELDS = frozenset(
    {"name", "desc", "job_type", "status_desc", "create_time", "start_time", "user_name",
     "queue_name", "run_mode", "restart_times", "root_id", "update_time", "variant",
     "secret_rev"}
)  # fmt: skip
_FIXED_FIELDS = frozenset({"job_id", "project_id", "status"})
_DAY_MS = 86_400_000
_NOT_FOUND = "DLI.16001"


def as_status(value: str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise SimRejected(f"unknown job status {value!r}") from None


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
        self.projects: dict[str, SimProject] = {}
        self.log: list[TruthEntry] = []
        self._all: list[Job] = []
        self._next_id = 10_000 + self.rng.randrange(90_000)
        for index in range(projects):
            self._seed_project(index, jobs_per_project, now_ms)

    # --- set-up ------------------------------------------------------------------------------

    def _seed_project(self, index: int, jobs: int, now_ms: int) -> None:
        rng = self.rng
        name = self.region if index == 0 else f"{self.region}_proj{index:03d}"
        users = {u: _hex32(rng) for u in rng.sample(_USERS, rng.randint(1, 3))}
        project_id = _hex32(rng)  # drawn before the queues: the seeded fleet stays the same
        queues = tuple(rng.sample(_QUEUES, rng.randint(1, 3)))
        project = SimProject(project_id, name, users, queues)
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

    def _new_job(self, project: SimProject, now_ms: int, status: JobStatus, **fields: Any) -> Job:
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

    def add_project(self, jobs: int, now_ms: int) -> str:
        """Seed one more project, as if created in the account now; returns its id."""
        before = set(self.projects)
        self._seed_project(len(before), jobs, now_ms)
        return next(pid for pid in self.projects if pid not in before)

    def remove_project(self, project_id: str) -> None:
        """Drop a project and its jobs, as if deleted from the account: DLI shows no job
        deletes for it (its list answers SIM.0404), so none is logged."""
        project = self.projects.pop(self.project(project_id).id)
        self._all = [job for job in self._all if job.project is not project]
        for slot, job in enumerate(self._all):
            job.slot = slot

    # --- mutations (each records its TruthEntry) -----------------------------------------------

    def _record(
        self, job: Job, kind: str, before: str | None, after: str | None, at: int
    ) -> TruthEntry:
        change = TruthEntry(len(self.log) + 1, job.project.id, job.job_id, kind, before, after, at)
        self.log.append(change)
        return change

    def _add(self, job: Job, now_ms: int) -> TruthEntry:
        job.project.jobs[job.job_id] = job
        job.project.invalidate()
        job.slot = len(self._all)
        self._all.append(job)
        return self._record(job, "created", None, str(job.status), now_ms)

    def project(self, project_id: str) -> SimProject:
        project = self.projects.get(project_id)
        if project is None:
            raise SimRejected(f"no project {project_id}", status=404, code="SIM.0404")
        return project

    def get(self, project_id: str, job_id: int) -> Job:
        job = self.project(project_id).jobs.get(job_id)
        if job is None:
            # DLI answers a missing job with 400 DLI.16001, not 404 (Terraform maps it to "gone").
            raise SimRejected(f"The job {job_id} does not exist.", code=_NOT_FOUND)
        return job

    def create(self, project_id: str, now_ms: int, **fields: Any) -> TruthEntry:
        status = as_status(fields.pop("status", S.INIT))
        job = self._new_job(self.project(project_id), now_ms, status, **fields)
        return self._add(job, now_ms)

    def set_status(self, project_id: str, job_id: int, status: str, now_ms: int) -> TruthEntry:
        job = self.get(project_id, job_id)
        before, target = job.status, as_status(status)
        self._enter(job, target, now_ms)
        return self._record(job, "status_changed", before, target, now_ms)

    def update(self, project_id: str, job_id: int, now_ms: int, **fields: Any) -> TruthEntry:
        job = self.get(project_id, job_id)
        self._apply_fields(job, fields)
        if "update_time" not in fields:
            job.update_time = max(now_ms, job.update_time + 1)
        return self._record(job, "updated", job.status, job.status, now_ms)

    def delete(self, project_id: str, job_id: int, now_ms: int) -> TruthEntry:
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
                raise SimRejected(f"job field {key!r} cannot be set by hand this way")
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
        for knob in FLAG_KNOBS:
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

    def step(self, changes: int, now_ms: int) -> list[TruthEntry]:
        """Make ``changes`` random changes: status moves, edits, creations and deletions."""
        return [self._one_step(now_ms) for _ in range(changes)]

    def _one_step(self, now_ms: int) -> TruthEntry:
        if not self.projects:
            message = "a fleet without projects cannot change: start it with projects > 0"
            raise SimRejected(message, status=409, code="SIM.0409")
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
                knob = rng.choice(FLAG_KNOBS)
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
