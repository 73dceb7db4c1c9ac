"""PageScan: offset paging with one row of overlap, stepping back when deletions shift rows."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from bridge.errors import ApiUnavailable
from bridge.models import Fetched, JobListItem
from bridge.paging import MAX_STEP_BACKS, PageScan


def _row(job_id: int) -> Fetched[JobListItem]:
    return Fetched(raw={"job_id": job_id}, model=JobListItem(job_id=job_id))


def _page(jobs: list[int], offset: int, limit: int) -> list[Fetched[JobListItem]]:
    return [_row(j) for j in jobs[offset : offset + limit]]


def _ids(rows: list[Fetched[JobListItem]]) -> list[int]:
    return [r.model.job_id for r in rows]


def _sweep(jobs: list[int], limit: int, between=lambda n: None) -> tuple[list[int], PageScan]:
    scan = PageScan(limit)
    taken: list[int] = []
    reads = 0
    while scan.offset is not None:
        taken += _ids(scan.take(_page(jobs, scan.offset, limit)))
        reads += 1
        between(reads)
    return taken, scan


@pytest.mark.parametrize(("asked", "limit"), [(1, 2), (2, 2), (50, 50), (100, 100), (500, 100)])
def test_scan_page_size_is_kept_within_dli_limits(asked, limit):
    assert PageScan(asked).limit == limit


def test_scan_gives_up_on_endless_churn():
    scan = PageScan(10, "p1")
    scan.take([_row(i) for i in range(10)])
    for _ in range(MAX_STEP_BACKS):
        scan.offset = 9
        scan.take([_row(1000)])  # never a row seen before: contact lost each time
    scan.offset = 9
    with pytest.raises(ApiUnavailable) as caught:
        scan.take([_row(1000)])
    assert caught.value.project_id == "p1"


def test_scan_reads_every_row_once_with_one_row_overlap():
    offsets: list[int] = []
    scan = PageScan(10)
    jobs = list(range(25))
    while scan.offset is not None:
        offsets.append(scan.offset)
        scan.take(_page(jobs, scan.offset, 10))
    assert offsets == [0, 9, 18]


def test_scan_of_exact_multiple_ends_on_the_overlap_row():
    taken, scan = _sweep(list(range(20)), 10)
    assert taken == list(range(20))
    assert scan.step_backs == 0


def test_scan_of_empty_list_ends_at_once():
    taken, scan = _sweep([], 10)
    assert (taken, scan.offset) == ([], None)


def test_deletion_before_boundary_steps_back_and_keeps_live_jobs():
    jobs = list(range(30))

    def delete_two(reads: int) -> None:
        if reads == 1:
            del jobs[2:4]  # rows 10 and 11 shift left past the next page's first row

    taken, scan = _sweep(jobs, 10, delete_two)
    assert set(range(30)) - {2, 3} <= set(taken)
    assert len(taken) == len(set(taken))
    assert scan.step_backs == 1


def test_deletion_of_boundary_row_is_detected():
    jobs = list(range(30))

    def delete_anchor(reads: int) -> None:
        if reads == 1:
            jobs.remove(9)

    taken, _ = _sweep(jobs, 10, delete_anchor)
    assert set(range(30)) - {9} <= set(taken)


def test_creation_mid_scan_is_picked_up():
    jobs = list(range(15))

    def create(reads: int) -> None:
        if reads == 1:
            jobs.append(100)

    taken, _ = _sweep(jobs, 10, create)
    assert taken == [*range(15), 100]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 60),
    limit=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    churn=st.floats(0.0, 0.5),
)
def test_scan_never_loses_a_job_that_lives_through_it(size, limit, seed, churn):
    """Between any two reads some jobs are deleted and new ones appended (ascending order)."""
    rng = random.Random(seed)
    jobs = list(range(size))
    deleted: set[int] = set()
    next_id = [size]

    def mutate(reads: int) -> None:
        for job in list(jobs):
            if rng.random() < churn / max(len(jobs), 1) * 3:
                jobs.remove(job)
                deleted.add(job)
        if rng.random() < churn:
            jobs.append(next_id[0])
            next_id[0] += 1

    try:
        taken, _ = _sweep(jobs, limit, mutate)
    except ApiUnavailable:
        reject()  # churn beyond MAX_STEP_BACKS: the sweep gives up by design
    assert len(taken) == len(set(taken))
    assert set(range(size)) - deleted <= set(taken)
