"""List-mode decisions, pure: which jobs of one sweep need a detail call, and which are missing."""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from bridge import lifecycle
from bridge.diff import DEFAULT_IGNORE, without_ignored
from bridge.models import JsonDict

__all__ = [
    "DETAIL_ROW_LACKS",
    "FAST_LANE_POLLS",
    "QUICK_HASH",
    "SINCE_BEFORE",
    "Known",
    "Plan",
    "Reason",
    "Row",
    "fingerprint",
    "in_fast_lane",
    "phase",
    "plan",
    "quick_hash",
    "quiet",
    "reconcile_due",
    "row_fingerprint",
]

# A `show_detail=true` row lacks `user_name`, `root_id` (light-row and detail fields) and
# `duration` (light rows only): compared with a detail, these are never looked at (sweep mode
# ignores them; a list-mode reconcile compares the rest). See reference §1.3.
DETAIL_ROW_LACKS: tuple[str, ...] = ("user_name", "root_id", "duration")

# ``Known.status_since`` of a job found already in its status (the first sweep): it may have
# sat there for hours, so it gets no fast lane; the lane is for moves the bridge saw happen.
SINCE_BEFORE = 0.0

# A job entering a transitional status gets this many fast detail polls, one every
# ``transitional_interval_s``; a job that stays there longer (DLI jobs can sit in submitting
# for hours) falls back to the list sweep, whose row shows its status, and the reconcile.
FAST_LANE_POLLS = 6


@dataclass(slots=True)
class Known:
    """What the engine remembers per job for list-mode decisions (it owns and updates it)."""

    row_fp: bytes | None  # fingerprint of the last list row (volatile fields removed)
    detail_at: float | None  # epoch seconds of the last detail fetch (None = never)
    status: str | None
    misses: int = 0  # consecutive complete sweeps the job was absent from
    status_since: float | None = None  # epoch seconds it entered ``status`` (see SINCE_BEFORE)
    detail_fp: bytes | None = None  # of the last detail's fields a show_detail row shows too


class Row(NamedTuple):
    """One list row reduced to what the plan needs (a tuple: made by the hundred thousand)."""

    job_id: int
    fp: bytes
    status: str | None
    same: bool | None = None  # decided by the caller (a reconcile row): None = compare ``fp``


class Reason(enum.StrEnum):
    """Why a job needs a detail call; the first that applies wins, in this order."""

    NEW = "new"
    CHANGED = "changed"
    TRANSITIONAL = "transitional"
    RECONCILE = "reconcile"
    CONFIRM_DELETE = "confirm_delete"


@dataclass(frozen=True, slots=True)
class Plan:
    """One sweep's decisions. ``confirm_delete`` jobs are also in ``fetch``."""

    fetch: Mapping[int, Reason]
    missing: tuple[int, ...]
    confirm_delete: tuple[int, ...]


def row_fingerprint(
    row: JsonDict, ignore: Collection[str] = DEFAULT_IGNORE, key: bytes = b""
) -> bytes:
    """16 bytes that change when any field of ``row`` but the ignored ones changes (keyed:
    the engine publishes them in state records)."""
    canonical = orjson.dumps(without_ignored(row, ignore), option=orjson.OPT_SORT_KEYS)
    return fingerprint(canonical, key)


def fingerprint(data: bytes, key: bytes = b"") -> bytes:
    """16 bytes that differ when ``data`` does (keyed BLAKE2b): compared before parsing."""
    hasher = _keyed(key).copy()  # a copy of a keyed state: cheaper than keying each time
    hasher.update(data)
    return hasher.digest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16, key=key)


# Python hashes bytes with SipHash under a key drawn at random for each process, unless
# PYTHONHASHSEED pins it; a pinned key may be known, and under a known key SipHash is easy to
# collide with (a job's author could hide a change), so the quick check is then off.
QUICK_HASH = os.environ.get("PYTHONHASHSEED", "random") == "random"


def quick_hash(data: bytes) -> int:
    """``hash(data)``, to recognise bytes seen before in this process; 0 (no check) when the
    process's hash key is pinned. Not for anything kept beyond the process."""
    return hash(data) if QUICK_HASH else 0


def plan(
    known: Mapping[int, Known],
    rows: Sequence[Row] | None,
    *,
    now: float,
    reconcile_interval_s: float | None,
    transitional_interval_s: float,
    delete_after_misses: int,
    present: Collection[int] | None = None,
) -> Plan:
    """Decide one sweep of one project; ``rows=None`` means the sweep did not complete.

    ``present``: every job id the complete sweep listed, when ``rows`` holds only some of
    them; the others must be ``quiet`` (the plan would leave them alone anyway).

    An incomplete sweep says nothing about absence: it counts no miss and confirms no delete,
    and only brings known jobs up that are due for a transitional or reconcile fetch.
    ``reconcile_interval_s=None``: no per-job reconcile (the engine's list mode reconciles a
    whole project with one ``show_detail=true`` sweep instead).
    """
    fetch: dict[int, Reason] = {}
    if rows is None:
        for job_id, job in known.items():
            reason = _due(
                job_id, job, job.status, now, reconcile_interval_s, transitional_interval_s
            )
            if reason is not None:
                fetch[job_id] = reason
        return Plan(fetch=fetch, missing=(), confirm_delete=())
    for row in rows:
        reason = _row_reason(
            row, known.get(row.job_id), now, reconcile_interval_s, transitional_interval_s
        )
        if reason is not None:
            fetch[row.job_id] = reason
    seen = present if present is not None else {row.job_id for row in rows}
    missing = tuple(sorted(job_id for job_id in known if job_id not in seen))
    confirm = tuple(j for j in missing if known[j].misses + 1 >= delete_after_misses)
    fetch.update(dict.fromkeys(confirm, Reason.CONFIRM_DELETE))
    return Plan(fetch=fetch, missing=missing, confirm_delete=confirm)


def quiet(job: Known | None, fp: bytes, status: str | None) -> bool:
    """Whether a light row needs no look from ``plan`` (no per-job reconcile): a job fetched
    before, its row unchanged, not in a transitional status. Most rows of most sweeps."""
    return (
        job is not None
        and job.row_fp == fp
        and job.detail_at is not None
        and status not in lifecycle.TRANSITIONAL
    )


def _row_reason(
    row: Row, job: Known | None, now: float, reconcile_s: float | None, transitional_s: float
) -> Reason | None:
    if job is None:
        return Reason.NEW
    if row.same is False or (row.same is None and job.row_fp != row.fp):
        return Reason.CHANGED  # also when we never saw a row of it (row_fp None)
    return _due(row.job_id, job, row.status, now, reconcile_s, transitional_s)


def _due(
    job_id: int,
    job: Known,
    status: str | None,
    now: float,
    reconcile_s: float | None,
    transitional_s: float,
) -> Reason | None:
    if job.detail_at is None:
        return Reason.RECONCILE
    if (
        status in lifecycle.TRANSITIONAL
        and now - job.detail_at >= transitional_s
        and in_fast_lane(job, now, transitional_s)
    ):
        return Reason.TRANSITIONAL
    if reconcile_s is not None and reconcile_due(job_id, job.detail_at, now, reconcile_s):
        return Reason.RECONCILE
    return None


def in_fast_lane(job: Known, now: float, transitional_s: float) -> bool:
    """Whether a job in a transitional status still gets fast polls: it moved there less
    than ``FAST_LANE_POLLS`` fast polls ago (a job found there, or restored, never does)."""
    return job.status_since is None or now - job.status_since < FAST_LANE_POLLS * transitional_s


def phase(job_id: int) -> float:
    """A job's fixed place in [0, 1) of the reconcile cycle (Fibonacci hashing of its id)."""
    return ((job_id * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) / 2.0**64


def reconcile_due(job_id: int, detail_at: float, now: float, interval_s: float) -> bool:
    """Whether a job last fetched at ``detail_at`` is due for its safety-net reconcile.

    Each job has a slot every ``interval_s`` at its own phase, so a fleet discovered at one
    moment spreads out over the cycle instead of coming due at once. A job is due when a slot
    of it has passed since its last fetch: at most one reconcile per interval, and never more
    than ``interval_s`` after the last fetch.
    """
    if interval_s <= 0 or now - detail_at >= interval_s:
        return True
    offset = phase(job_id) * interval_s
    last_slot = offset + math.floor((now - offset) / interval_s) * interval_s
    return detail_at < last_slot
