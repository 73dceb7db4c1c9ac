"""The DLI Flink job status machine: the 14 documented statuses and the legal direct moves."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = ["TRANSITIONAL", "TRANSITIONS", "JobStatus", "is_legal"]


class JobStatus(StrEnum):
    """A Flink job's ``status`` as the Job Details page lists it (seed Table 3)."""

    INIT = "job_init"
    SUBMITTING = "job_submitting"
    SUBMIT_FAIL = "job_submit_fail"
    RUNNING = "job_running"
    RUNNING_EXCEPTION = "job_running_exception"
    DOWNLOADING = "job_downloading"
    IDLE = "job_idle"
    CANCELING = "job_canceling"
    CANCEL_SUCCESS = "job_cancel_success"
    CANCEL_FAIL = "job_cancel_fail"
    SAVEPOINTING = "job_savepointing"
    ARREARAGE_STOPPED = "job_arrearage_stopped"
    ARREARAGE_RECOVERING = "job_arrearage_recovering"
    FINISH = "job_finish"


S = JobStatus

# DLI documents the statuses but not the edges between them. Each edge says where it comes
# from: [doc] = the status descriptions on the Job Details page, [api] = an operation of the
# Flink job APIs (run / stop with or without savepoint / savepoint), [inf] = our inference.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # [api] a draft is run (POST .../streaming/jobs/run).
    S.INIT: frozenset({S.SUBMITTING}),
    # [doc] submission succeeds ("running ... after the job is submitted") or fails;
    # [inf] jar/resource packages are fetched first (downloading); [api] stop while submitting.
    S.SUBMITTING: frozenset({S.RUNNING, S.SUBMIT_FAIL, S.DOWNLOADING, S.CANCELING}),
    # [inf] once the packages are in place the submission carries on or fails.
    S.DOWNLOADING: frozenset({S.SUBMITTING, S.RUNNING, S.SUBMIT_FAIL}),
    # [api] a failed submission is fixed and run again.
    S.SUBMIT_FAIL: frozenset({S.SUBMITTING}),
    # [api] stop, savepoint; [doc] exception, arrears, completion (bounded sources);
    # [inf] idle when there is nothing to process.
    S.RUNNING: frozenset(
        {
            S.CANCELING,
            S.RUNNING_EXCEPTION,
            S.SAVEPOINTING,
            S.FINISH,
            S.ARREARAGE_STOPPED,
            S.IDLE,
        }
    ),
    # [inf] an idle job wakes up, is stopped, or is stopped for arrears.
    S.IDLE: frozenset({S.RUNNING, S.CANCELING, S.ARREARAGE_STOPPED}),
    # [doc] restart_when_exception restarts the job (restart_times + 1); [api] the user runs
    # it again.
    S.RUNNING_EXCEPTION: frozenset({S.RUNNING, S.SUBMITTING}),
    # [doc] the savepoint completes and the job keeps running, or fails; [api] "stop with
    # savepoint" ends in cancel_success; [inf] a stop requested during a savepoint.
    S.SAVEPOINTING: frozenset({S.RUNNING, S.CANCELING, S.CANCEL_SUCCESS, S.RUNNING_EXCEPTION}),
    # [doc] stopping succeeds or fails.
    S.CANCELING: frozenset({S.CANCEL_SUCCESS, S.CANCEL_FAIL}),
    # [inf] a failed stop leaves the job running, or the user tries again.
    S.CANCEL_FAIL: frozenset({S.RUNNING, S.CANCELING}),
    # [api] a stopped or finished job is run again.
    S.CANCEL_SUCCESS: frozenset({S.SUBMITTING}),
    S.FINISH: frozenset({S.SUBMITTING}),
    # [doc] the account is recharged and the job is restored.
    S.ARREARAGE_STOPPED: frozenset({S.ARREARAGE_RECOVERING}),
    # [doc] restoring ends with the job running; [inf] or failing.
    S.ARREARAGE_RECOVERING: frozenset({S.RUNNING, S.RUNNING_EXCEPTION}),
}

# Statuses a job passes through on its way somewhere else; worth polling faster.
TRANSITIONAL: frozenset[JobStatus] = frozenset(
    {S.SUBMITTING, S.CANCELING, S.SAVEPOINTING, S.DOWNLOADING, S.ARREARAGE_RECOVERING}
)

_BY_VALUE: Mapping[str, JobStatus] = {status.value: status for status in JobStatus}


def is_legal(before: str, after: str) -> bool:
    """Whether DLI can move a job from ``before`` to ``after`` in one step.

    Unknown status strings are never legal; staying in the same status is not a transition.
    """
    source = _BY_VALUE.get(before)
    target = _BY_VALUE.get(after)
    if source is None or target is None:
        return False
    return target in TRANSITIONS[source]
