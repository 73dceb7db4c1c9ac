"""sweep: which jobs of a list sweep need a detail call, which are missing, which to confirm."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sweep import (
    FAST_LANE_POLLS,
    Known,
    Plan,
    Reason,
    Row,
    phase,
    plan,
    quiet,
    reconcile_due,
    row_fingerprint,
)

NOW = 1_000_000.0
RECONCILE = 600.0
FAST = 5.0
FP = b"f" * 16


def _plan(known, rows, *, now=NOW, misses=2, reconcile=RECONCILE) -> Plan:
    return plan(
        known,
        rows,
        now=now,
        reconcile_interval_s=reconcile,
        transitional_interval_s=FAST,
        delete_after_misses=misses,
    )


def _known(status="job_running", detail_at=NOW - 1, fp=FP, misses=0, since=None) -> Known:
    return Known(row_fp=fp, detail_at=detail_at, status=status, misses=misses, status_since=since)


def _row(job_id=1, fp=FP, status="job_running") -> Row:
    return Row(job_id=job_id, fp=fp, status=status)


# --- row fingerprints ----------------------------------------------------------------------


def test_fingerprint_ignores_volatile_fields_and_key_order():
    a = {"job_id": 1, "status": "job_running", "duration": 5, "cfg": {"x": 1, "y": 2}}
    b = {"cfg": {"y": 2, "x": 1}, "duration": 99, "status": "job_running", "job_id": 1}
    assert row_fingerprint(a) == row_fingerprint(b)
    assert len(row_fingerprint(a)) == 16


@pytest.mark.parametrize("field", ["status", "name", "job_id", "restart_times"])
def test_fingerprint_sees_every_other_field(field):
    row = {"job_id": 1, "status": "job_running", "name": "n", "restart_times": 0}
    assert row_fingerprint(row) != row_fingerprint({**row, field: "other"})


def test_fingerprint_ignore_list_is_configurable():
    a, b = {"job_id": 1, "name": "a"}, {"job_id": 1, "name": "b"}
    assert row_fingerprint(a, ignore=("name",)) == row_fingerprint(b, ignore=("name",))


# --- a complete sweep ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "row", "reason"),
    [
        (None, _row(), Reason.NEW),
        (_known(), _row(fp=b"g" * 16), Reason.CHANGED),
        (_known(fp=None), _row(), Reason.CHANGED),
        (_known(), _row(), None),
        (_known(detail_at=None), _row(), Reason.RECONCILE),
        (_known(detail_at=NOW - RECONCILE), _row(), Reason.RECONCILE),
        (_known(detail_at=NOW - FAST), _row(status="job_submitting"), Reason.TRANSITIONAL),
        (_known(detail_at=NOW - FAST + 1), _row(status="job_canceling"), None),
        (_known(detail_at=NOW - FAST), _row(status="job_running"), None),
        # the row's status is fresher than what we remember
        (_known(status="job_submitting", detail_at=NOW - FAST), _row(), None),
        (_known(detail_at=NOW - RECONCILE), _row(status="job_savepointing"), Reason.TRANSITIONAL),
        # the fast lane lasts FAST_LANE_POLLS intervals into a transitional status, then the
        # row (which shows the status) and the reconcile take over
        (
            _known(detail_at=NOW - FAST, since=NOW - (FAST_LANE_POLLS - 1) * FAST),
            _row(status="job_submitting"),
            Reason.TRANSITIONAL,
        ),
        (
            _known(detail_at=NOW - FAST, since=NOW - FAST_LANE_POLLS * FAST),
            _row(status="job_submitting"),
            None,
        ),
    ],
)
def test_reason_for_a_listed_job(job, row, reason):
    known = {} if job is None else {row.job_id: job}
    result = _plan(known, [row])
    assert dict(result.fetch) == ({} if reason is None else {row.job_id: reason})
    assert (result.missing, result.confirm_delete) == ((), ())


def test_absent_jobs_are_missing_and_confirmed_after_n_sweeps():
    known = {1: _known(), 2: _known(misses=0), 3: _known(misses=1), 4: _known(misses=5)}
    result = _plan(known, [_row(1)], misses=2)
    assert result.missing == (2, 3, 4)
    assert result.confirm_delete == (3, 4)
    assert dict(result.fetch) == {3: Reason.CONFIRM_DELETE, 4: Reason.CONFIRM_DELETE}


def test_one_miss_confirms_when_configured_so():
    result = _plan({7: _known()}, [], misses=1)
    assert (result.missing, result.confirm_delete) == ((7,), (7,))


def test_empty_complete_sweep_of_nothing_known_is_empty():
    assert _plan({}, []) == Plan(fetch={}, missing=(), confirm_delete=())


# --- an incomplete sweep -------------------------------------------------------------------


def test_incomplete_sweep_counts_no_miss_and_only_due_jobs():
    known = {
        1: _known(),  # fresh: nothing to do
        2: _known(detail_at=NOW - RECONCILE),
        3: _known(status="job_canceling", detail_at=NOW - FAST),
        4: _known(detail_at=None, misses=9),
    }
    result = _plan(known, None, misses=1)
    assert (result.missing, result.confirm_delete) == ((), ())
    assert dict(result.fetch) == {
        2: Reason.RECONCILE,
        3: Reason.TRANSITIONAL,
        4: Reason.RECONCILE,
    }


# --- reconcile spreading -------------------------------------------------------------------


def test_phases_spread_a_fleet_over_the_cycle():
    phases = sorted(phase(job_id) for job_id in range(1000, 2000))
    assert phases[0] >= 0
    assert phases[-1] < 1
    buckets = [0] * 10
    for p in phases:
        buckets[int(p * 10)] += 1
    assert min(buckets) > 60  # about 100 each: no pile-up


def test_a_fleet_fetched_at_once_comes_due_spread_out():
    """1000 jobs discovered at t0: in any tenth of the interval only about a tenth comes due."""
    t0 = NOW
    due_at = []
    for job_id in range(1000):
        t = next(t0 + s for s in range(1, 601) if reconcile_due(job_id, t0, t0 + s, RECONCILE))
        due_at.append(t - t0)
    per_minute = [sum(1 for d in due_at if m * 60 < d <= (m + 1) * 60) for m in range(10)]
    assert max(per_minute) < 160


def test_zero_interval_reconciles_every_sweep():
    assert reconcile_due(1, NOW, NOW, 0.0)


@settings(max_examples=500, deadline=None)
@given(
    job_id=st.integers(0, 2**63 - 1),
    detail_at=st.floats(0, 1e9),
    elapsed=st.floats(0, 3 * RECONCILE),
    interval=st.floats(1, 1e5),
)
def test_every_job_comes_up_within_the_reconcile_interval(job_id, detail_at, elapsed, interval):
    now = detail_at + elapsed
    if now - detail_at >= interval:
        assert reconcile_due(job_id, detail_at, now, interval)
        result = _plan(
            {job_id: _known(detail_at=detail_at)}, [_row(job_id)], now=now, reconcile=interval
        )
        assert result.fetch == {job_id: Reason.RECONCILE}


@settings(max_examples=300, deadline=None)
@given(job_id=st.integers(0, 2**40), start=st.floats(0, 1e7), step=st.floats(0.5, 120))
def test_reconciles_come_at_most_once_per_interval(job_id, start, step):
    """Sweeping every ``step`` seconds and fetching when due: gaps stay within one interval."""
    detail_at, t, fetches = start, start, [start]
    while t < start + 5 * RECONCILE:
        t += step
        if reconcile_due(job_id, detail_at, t, RECONCILE):
            detail_at = t
            fetches.append(t)
    gaps = [b - a for a, b in itertools.pairwise(fetches)]
    assert all(g <= RECONCILE + step for g in gaps)
    assert len(fetches) - 1 <= 6  # one slot per interval, five intervals


# --- sweep properties ----------------------------------------------------------------------

_fps = st.sampled_from([b"a" * 16, b"b" * 16, None])
_statuses = st.sampled_from(["job_running", "job_submitting", "job_canceling", None])
_knowns = st.dictionaries(
    st.integers(0, 30),
    st.builds(
        Known,
        row_fp=_fps,
        detail_at=st.none() | st.floats(NOW - 2 * RECONCILE, NOW),
        status=_statuses,
        misses=st.integers(0, 4),
    ),
    max_size=12,
)
_rows = st.lists(
    st.builds(
        Row, job_id=st.integers(0, 30), fp=_fps.filter(bool), status=_statuses, same=st.none()
    ),
    max_size=12,
    unique_by=lambda r: r.job_id,
)


@settings(max_examples=400, deadline=None)
@given(known=_knowns, misses=st.integers(1, 4))
def test_incomplete_sweep_never_misses_or_deletes(known, misses):
    result = _plan(known, None, misses=misses)
    assert result.missing == ()
    assert result.confirm_delete == ()
    assert Reason.CONFIRM_DELETE not in result.fetch.values()


@settings(max_examples=400, deadline=None)
@given(known=_knowns, rows=_rows, misses=st.integers(1, 4))
def test_complete_sweep_never_misses_a_new_or_changed_row(known, rows, misses):
    result = _plan(known, rows, misses=misses)
    listed = {row.job_id for row in rows}
    for row in rows:
        job = known.get(row.job_id)
        if job is None:
            assert result.fetch[row.job_id] is Reason.NEW
        elif job.row_fp != row.fp:
            assert result.fetch[row.job_id] is Reason.CHANGED
    assert set(result.missing) == set(known) - listed
    assert set(result.confirm_delete) <= set(result.missing)
    for job_id in result.confirm_delete:
        assert result.fetch[job_id] is Reason.CONFIRM_DELETE
        assert known[job_id].misses + 1 >= misses


@settings(max_examples=400, deadline=None)
@given(known=_knowns, rows=_rows, misses=st.integers(1, 4))
def test_leaving_quiet_rows_out_changes_no_plan(known, rows, misses):
    """The engine hands the plan only the rows that are not quiet (plus every listed id):
    the plan must come out exactly as if it had seen them all (list mode: no per-job
    reconcile)."""
    whole = plan(
        known,
        rows,
        now=NOW,
        reconcile_interval_s=None,
        transitional_interval_s=FAST,
        delete_after_misses=misses,
    )
    loud = [row for row in rows if not quiet(known.get(row.job_id), row.fp, row.status)]
    part = plan(
        known,
        loud,
        now=NOW,
        reconcile_interval_s=None,
        transitional_interval_s=FAST,
        delete_after_misses=misses,
        present={row.job_id for row in rows},
    )
    assert part == whole
    assert all(
        job_id not in whole.fetch for job_id in {r.job_id for r in rows} - {r.job_id for r in loud}
    )


def test_a_quiet_row_is_a_fetched_unchanged_settled_job():
    assert quiet(_known(), FP, "job_running")
    assert not quiet(None, FP, "job_running")  # new
    assert not quiet(_known(fp=b"x" * 16), FP, "job_running")  # changed
    assert not quiet(_known(detail_at=None), FP, "job_running")  # never fetched
    assert not quiet(_known(), FP, "job_submitting")  # transitional: maybe fast lane
