"""The simulated fleet: seeded projects and jobs, the walk along legal edges, ground truth."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import pytest

from bridge.lifecycle import is_legal
from bridge.simulator import SimRejected, Simulator, SimulatorConfig, TruthEntry
from bridge.simulator.fleet import Fleet
from tests.fakes import T0, FakeClock


def test_project_ids_are_seeded_lowercase_hex():
    first = Simulator(SimulatorConfig(projects=5, jobs_per_project=1, seed=7)).project_ids
    again = Simulator(SimulatorConfig(projects=5, jobs_per_project=1, seed=7)).project_ids
    other = Simulator(SimulatorConfig(projects=5, jobs_per_project=1, seed=8)).project_ids
    assert first == again != other
    assert all(re.fullmatch(r"[0-9a-f]{32}", p) for p in first)
    assert len(set(first)) == 5


def test_startup_fleet_is_in_the_log_as_created():
    sim = Simulator(SimulatorConfig(projects=3, jobs_per_project=4), clock=FakeClock())
    log = sim.changes()
    assert [c.seq for c in log] == list(range(1, 13))
    assert {c.kind for c in log} == {"created"}
    assert all(c.status_after == sim.job(c.project_id, c.job_id)["status"] for c in log)
    assert all(c.at == int(T0 * 1000) for c in log)


def test_same_seed_and_steps_give_the_same_changes_and_jobs():
    def run(seed: int) -> tuple[list[TruthEntry], list[dict[str, Any]]]:
        sim = Simulator(
            SimulatorConfig(projects=3, jobs_per_project=20, seed=seed), clock=FakeClock()
        )
        sim.step(150)
        sim.step(150)
        live = [(pid, job_id) for pid in sim.project_ids for job_id in sim.fleet.projects[pid].jobs]
        jobs = [sim.job(pid, job_id) for pid, job_id in live]
        return sim.changes(), jobs

    assert run(3) == run(3)
    assert run(3)[0] != run(4)[0]


def test_walk_makes_every_kind_of_change_along_legal_edges():
    sim = Simulator(SimulatorConfig(projects=4, jobs_per_project=25, seed=1))
    made = sim.step(1500)
    assert {c.kind for c in made} == {"created", "status_changed", "updated", "deleted"}
    moves = [c for c in made if c.kind == "status_changed"]
    assert all(is_legal(c.status_before or "", c.status_after or "") for c in moves)
    reached = {c.status_after for c in moves}
    assert reached >= {"job_running", "job_canceling", "job_savepointing", "job_finish"}
    assert reached >= {"job_running_exception", "job_arrearage_stopped", "job_cancel_success"}
    assert all(c.status_before == c.status_after for c in made if c.kind == "updated")


def test_hand_driven_changes_are_recorded_with_their_effects():
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(projects=1, jobs_per_project=0), clock=clock)
    pid = sim.project_ids[0]
    job_id = sim.create_job(pid, name="hand", job_config={"restart_when_exception": True})
    for status in ("job_submitting", "job_running", "job_running_exception", "job_running"):
        clock.now += 1
        sim.set_status(pid, job_id, status)
    started, restarted = sim.job(pid, job_id)["start_time"], sim.job(pid, job_id)["restart_times"]
    clock.now += 1
    sim.update_job(pid, job_id, name="renamed", job_config={"cu_number": 8, "smn_topic": "t"})
    detail = sim.job(pid, job_id)
    sim.delete_job(pid, job_id)
    assert (started, restarted) == (int((T0 + 2) * 1000), 1)
    assert (detail["name"], detail["update_time"]) == ("renamed", int((T0 + 5) * 1000))
    assert (detail["job_config"]["cu_number"], detail["job_config"]["smn_topic"]) == (8, "t")
    assert [(c.kind, c.status_before, c.status_after) for c in sim.changes()] == [
        ("created", None, "job_init"),
        ("status_changed", "job_init", "job_submitting"),
        ("status_changed", "job_submitting", "job_running"),
        ("status_changed", "job_running", "job_running_exception"),
        ("status_changed", "job_running_exception", "job_running"),
        ("updated", "job_running", "job_running"),
        ("deleted", "job_running", None),
    ]
    with pytest.raises(SimRejected) as caught:
        sim.job(pid, job_id)
    assert caught.value.code == "DLI.16001"


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda s, p, j: s.set_status(p, j, "job_flying"), "DLI.0001"),
        (lambda s, p, j: s.update_job(p, j, status="job_running"), "DLI.0001"),
        (lambda s, p, j: s.set_status(p, j + 999_999, "job_running"), "DLI.16001"),
        (lambda s, p, j: s.create_job("no-such-project"), "SIM.0404"),
        (lambda s, p, j: s.set_faults("no-such-project", error_rate=1.0), "SIM.0404"),
        (lambda s, p, j: s.set_faults(p, malformed_rate=2.0), "DLI.0001"),
        (lambda s, p, j: s.set_faults(p, latency_s=float("inf")), "DLI.0001"),
        (lambda s, p, j: s.set_faults(p, throttle_per_s=float("nan")), "DLI.0001"),
    ],
)
def test_control_api_refuses_bad_input(action, code):
    sim = Simulator(SimulatorConfig(projects=1, jobs_per_project=1))
    pid = sim.project_ids[0]
    with pytest.raises(SimRejected) as caught:
        action(sim, pid, sim.changes()[0].job_id)
    assert caught.value.code == code


def test_every_truth_entry_names_project_job_kind_statuses_and_time():
    sim = Simulator(SimulatorConfig(projects=2, jobs_per_project=3), clock=FakeClock())
    sim.step(50)
    names = {f.name for f in fields(TruthEntry)}
    assert names >= {"project_id", "job_id", "kind", "status_before", "status_after", "at"}
    assert all(set(entry.as_dict()) == names for entry in sim.changes())
    assert all(entry.at == int(T0 * 1000) for entry in sim.changes())


def test_a_fleet_without_projects_cannot_step():
    fleet = Fleet(projects=0, jobs_per_project=0, seed=0, region="sim-1", now_ms=0)
    assert fleet.step(0, 0) == []
    with pytest.raises(SimRejected, match="without projects") as caught:
        fleet.step(1, 0)
    assert caught.value.status == 409
