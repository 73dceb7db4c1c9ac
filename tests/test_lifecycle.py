"""The DLI job status machine: statuses, legal direct transitions, transitional states."""

from __future__ import annotations

import pytest

from bridge.lifecycle import TRANSITIONAL, TRANSITIONS, JobStatus, is_legal
from bridge.simulator.fleet import WALK

DOCUMENTED = {
    "job_init",
    "job_submitting",
    "job_submit_fail",
    "job_running",
    "job_running_exception",
    "job_downloading",
    "job_idle",
    "job_canceling",
    "job_cancel_success",
    "job_cancel_fail",
    "job_savepointing",
    "job_arrearage_stopped",
    "job_arrearage_recovering",
    "job_finish",
}


def test_statuses_are_the_fourteen_documented():
    assert {s.value for s in JobStatus} == DOCUMENTED


def test_every_status_has_a_way_out():
    """No dead ends: DLI lets a user run a stopped, failed or finished job again."""
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(TRANSITIONS[s] for s in JobStatus)


def test_no_status_moves_to_itself():
    assert all(s not in targets for s, targets in TRANSITIONS.items())


def test_transitional_statuses():
    assert {s.value for s in TRANSITIONAL} == {
        "job_submitting",
        "job_canceling",
        "job_savepointing",
        "job_downloading",
        "job_arrearage_recovering",
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("job_init", "job_submitting"),
        ("job_submitting", "job_running"),
        ("job_submitting", "job_submit_fail"),
        ("job_running", "job_canceling"),
        ("job_running", "job_running_exception"),
        ("job_running", "job_savepointing"),
        ("job_running", "job_finish"),
        ("job_running", "job_arrearage_stopped"),
        ("job_running_exception", "job_running"),
        ("job_canceling", "job_cancel_success"),
        ("job_canceling", "job_cancel_fail"),
        ("job_savepointing", "job_running"),
        ("job_arrearage_stopped", "job_arrearage_recovering"),
        ("job_arrearage_recovering", "job_running"),
        ("job_cancel_success", "job_submitting"),
    ],
)
def test_is_legal_accepts_documented_and_inferred_moves(before, after):
    assert is_legal(before, after)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("job_init", "job_running"),  # a draft must be submitted first
        ("job_running", "job_cancel_success"),  # stopping passes through canceling
        ("job_cancel_success", "job_running"),  # a stopped job is resubmitted
        ("job_arrearage_stopped", "job_running"),  # restoring comes first
        ("job_finish", "job_running"),
        ("job_submit_fail", "job_running"),
        ("job_running", "job_running"),  # not a transition
        ("job_running", "job_init"),
        ("job_running", "job_exploded"),  # unknown status
        ("", "job_running"),
    ],
)
def test_is_legal_refuses_jumps_and_unknown_statuses(before, after):
    assert not is_legal(before, after)


def test_simulator_walk_only_takes_legal_edges():
    assert set(WALK) == set(JobStatus)
    for source, moves in WALK.items():
        assert moves
        assert all(is_legal(source, target) for target, _ in moves)
