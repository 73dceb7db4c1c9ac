"""The DLI simulator over real HTTP: list, detail, walk, ground truth, controls and config."""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

import pytest
from yarl import URL

from bridge.errors import ConfigError, JobNotFound
from bridge.lifecycle import is_legal
from bridge.simulator import Change, Simulator, SimulatorConfig
from tests.sim_calls import T0, FakeClock, call, jobs_url, list_all
from tests.sim_fixtures import MakeSimulator

TABLE3 = {
    "job_id", "name", "desc", "job_type", "status", "status_desc", "create_time", "start_time",
    "user_id", "queue_name", "project_id", "sql_body", "savepoint_path", "run_mode", "job_config",
    "main_class", "entrypoint_args", "execution_graph", "update_time", "user_name", "duration",
    "root_id", "graph_editor_enabled", "has_savepoint", "edge_group_ids", "restart_times",
}  # fmt: skip
TABLE4 = {
    "checkpoint_enabled", "checkpoint_interval", "checkpoint_mode", "log_enabled", "obs_bucket",
    "root_id", "edge_group_ids", "manager_cu_number", "graph_editor_enabled", "graph_editor_data",
    "executor_number", "executor_cu_number", "cu_number", "parallel_number", "smn_topic",
    "restart_when_exception", "resume_checkpoint", "resume_max_num", "checkpoint_path",
    "idle_state_retention", "config_url", "udf_jar_url", "dirty_data_strategy", "entrypoint",
    "dependency_jars", "dependency_files", "tm_cus", "tm_slot_num", "image", "feature",
    "flink_version", "operator_config", "static_estimator_config", "runtime_config",
    "real_cu_number",
}  # fmt: skip
LIGHT_ROW = {
    "job_id", "name", "desc", "user_name", "job_type", "status", "status_desc", "create_time",
    "start_time", "duration", "root_id", "graph_editor_enabled", "has_savepoint", "queue_name",
    "edge_group_ids", "restart_times", "savepoint_path",
}  # fmt: skip
DETAIL_ROW = TABLE3 - {"user_name", "duration", "root_id"}


# --- listing ------------------------------------------------------------------------------------


async def test_list_defaults_to_ten_newest_light_rows(make_simulator: MakeSimulator):
    async with make_simulator(jobs_per_project=25) as (sim, base):
        reply = await call("GET", jobs_url(base, sim.project_ids[0]))
    body = reply.json
    rows = body["job_list"]["jobs"]
    assert (reply.status, body["is_success"], body["job_list"]["total_count"]) == (200, "true", 25)
    assert len(rows) == 10
    assert all(set(row) == LIGHT_ROW for row in rows)
    keys = [(r["create_time"], r["job_id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)


async def test_list_pages_by_row_offset(make_simulator: MakeSimulator):
    async with make_simulator(jobs_per_project=25) as (sim, base):
        pid = sim.project_ids[0]
        pages = [
            (
                await call(
                    "GET", jobs_url(base, pid), params={"offset": o, "limit": 10, "order": "asc"}
                )
            ).json
            for o in (0, 10, 20, 30)
        ]
        everything = await list_all(base, pid)
    ids = [row["job_id"] for page in pages for row in page["job_list"]["jobs"]]
    assert ids == [row["job_id"] for row in everything]
    assert len(ids) == len(set(ids)) == 25
    assert [len(p["job_list"]["jobs"]) for p in pages] == [10, 10, 5, 0]
    assert {p["job_list"]["total_count"] for p in pages} == {25}


async def test_list_ties_on_create_time_are_ordered_by_job_id(make_simulator: MakeSimulator):
    async with make_simulator(projects=1, jobs_per_project=0, clock=FakeClock()) as (sim, base):
        pid = sim.project_ids[0]
        made = [sim.create_job(pid) for _ in range(3)]
        asc = await call("GET", jobs_url(base, pid), params={"order": "asc"})
        desc = await call("GET", jobs_url(base, pid))
    assert [r["job_id"] for r in asc.json["job_list"]["jobs"]] == made
    assert [r["job_id"] for r in desc.json["job_list"]["jobs"]] == made[::-1]


async def test_list_limit_zero_returns_only_the_count(simulator: tuple[Simulator, str]):
    sim, base = simulator
    reply = await call("GET", jobs_url(base, sim.project_ids[0]), params={"limit": 0})
    assert reply.json["job_list"] == {"total_count": 10, "jobs": []}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "-1"), ("limit", "101"), ("limit", "ten"), ("offset", "-1"), ("order", "up"),
        ("show_detail", "maybe"), ("job_type", "spark_job"), ("status", "job_flying"),
        ("name", "n" * 58), ("tags", "env"), ("root_job_id", "x"),
    ],
)  # fmt: skip
async def test_list_rejects_bad_parameters(simulator: tuple[Simulator, str], param, value):
    sim, base = simulator
    reply = await call("GET", jobs_url(base, sim.project_ids[0]), params={param: value})
    assert reply.status == 400
    assert reply.json.keys() == {"error_code", "error_msg"}
    assert reply.json["error_code"] == "DLI.0001"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"a", "b", "c"}),  # edge child jobs are left out without root_job_id
        ({"name": "orders"}, {"a", "c"}),  # substring
        ({"name": "Orders"}, set()),  # case-sensitive
        ({"job_type": "flink_jar_job"}, {"b"}),
        ({"queue_name": "q1"}, {"a", "c"}),
        ({"user_name": "bob"}, {"b", "c"}),
        ({"tags": "env=prod"}, {"a"}),
        ({"tags": "env=test,team=x"}, {"b"}),
        ({"status": "job_running"}, {"a"}),
        ({"root_job_id": "parent"}, {"d"}),
    ],
)
async def test_list_filters(make_simulator: MakeSimulator, params, expected):
    async with make_simulator(projects=1, jobs_per_project=0) as (sim, base):
        pid = sim.project_ids[0]
        ids = {
            "a": sim.create_job(pid, name="orders_etl", job_type="flink_sql_job", queue_name="q1",
                                user_name="alice", tags={"env": "prod"}, status="job_running"),
            "b": sim.create_job(pid, name="clicks_agg", job_type="flink_jar_job", queue_name="q2",
                                user_name="bob", tags={"env": "test", "team": "x"}),
            "c": sim.create_job(pid, name="orders_sync", job_type="flink_opensource_sql_job",
                                queue_name="q1", user_name="bob"),
        }  # fmt: skip
        ids["d"] = sim.create_job(pid, name="edge_child", root_id=ids["a"])
        if "root_job_id" in params:
            params = {"root_job_id": ids["a"]}
        rows = await list_all(base, pid, **params)
    names = {v: k for k, v in ids.items()}
    assert {names[r["job_id"]] for r in rows} == expected


async def test_list_show_detail_rows_carry_config_and_update_time(simulator: tuple[Simulator, str]):
    sim, base = simulator
    rows = await list_all(base, sim.project_ids[0], show_detail="true")
    assert len(rows) == 10
    assert all(set(row) == DETAIL_ROW for row in rows)
    assert all(set(row["job_config"]) == TABLE4 for row in rows)


async def test_never_started_job_has_zero_start_in_rows_and_null_in_detail(
    make_simulator: MakeSimulator,
):
    async with make_simulator(projects=1, jobs_per_project=0) as (sim, base):
        pid = sim.project_ids[0]
        job_id = sim.create_job(pid)
        (row,) = await list_all(base, pid)
        detail = await call("GET", jobs_url(base, pid, job_id))
    assert (row["status"], row["start_time"], row["duration"]) == ("job_init", 0, 0)
    assert detail.json["job_detail"]["start_time"] is None


# --- detail -------------------------------------------------------------------------------------


async def test_detail_carries_every_documented_field(simulator: tuple[Simulator, str]):
    sim, base = simulator
    pid = sim.project_ids[2]
    (row, *_) = await list_all(base, pid)
    reply = await call("GET", jobs_url(base, pid, row["job_id"]))
    body = reply.json
    assert (body["is_success"], body["message"]) == ("true", "Job detail query succeeds.")
    detail = body["job_detail"]
    assert set(detail) == TABLE3 - {"duration"}  # duration: light list rows only
    assert set(detail["job_config"]) == TABLE4
    assert detail == sim.job(pid, row["job_id"])
    assert detail["project_id"] == pid


async def test_detail_of_missing_job_is_400_dli_16001(simulator: tuple[Simulator, str]):
    sim, base = simulator
    other_project_job = (await list_all(base, sim.project_ids[1]))[0]["job_id"]
    for job_id in (1, other_project_job):
        reply = await call("GET", jobs_url(base, sim.project_ids[0], job_id))
        assert reply.status == 400
        assert reply.json["error_code"] == "DLI.16001"


async def test_detail_with_non_numeric_id_is_400_dli_0001(simulator: tuple[Simulator, str]):
    sim, base = simulator
    reply = await call("GET", jobs_url(base, sim.project_ids[0], "abc"))
    assert (reply.status, reply.json["error_code"]) == (400, "DLI.0001")


# --- walk, ground truth, determinism ------------------------------------------------------------


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
    def run(seed: int) -> tuple[list[Change], list[dict[str, Any]]]:
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
    with pytest.raises(JobNotFound):
        sim.job(pid, job_id)


async def test_stopped_job_duration_is_frozen(make_simulator: MakeSimulator):
    clock = FakeClock()
    async with make_simulator(projects=1, jobs_per_project=0, clock=clock) as (sim, base):
        pid = sim.project_ids[0]
        job = sim.create_job(pid, status="job_submitting")
        sim.set_status(pid, job, "job_running")
        clock.now += 10
        (running,) = await list_all(base, pid)
        sim.set_status(pid, job, "job_canceling")
        sim.set_status(pid, job, "job_cancel_success")
        clock.now += 50
        (stopped,) = await list_all(base, pid)
    assert (running["duration"], stopped["duration"]) == (10_000, 10_000)
    assert stopped["start_time"] == int(T0 * 1000)


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda s, p, j: s.set_status(p, j, "job_flying"), ConfigError),
        (lambda s, p, j: s.update_job(p, j, status="job_running"), ConfigError),
        (lambda s, p, j: s.set_status(p, j + 999_999, "job_running"), JobNotFound),
        (lambda s, p, j: s.create_job("no-such-project"), JobNotFound),
        (lambda s, p, j: s.set_faults("no-such-project", error_rate=1.0), JobNotFound),
        (lambda s, p, j: s.set_faults(p, malformed_rate=2.0), ConfigError),
    ],
)
def test_control_api_refuses_bad_input(action, error):
    sim = Simulator(SimulatorConfig(projects=1, jobs_per_project=1))
    pid = sim.project_ids[0]
    with pytest.raises(error):
        action(sim, pid, sim.changes()[0].job_id)


@pytest.mark.parametrize(
    "bad",
    [
        {"error_rate": 1.5},
        {"malformed_rate": -0.1},
        {"projects": -1},
        {"token_ttl_s": 0},
        {"projects": 0, "change_rate": 1.0},
    ],
)
def test_config_validation_lists_problems(bad):
    with pytest.raises(ConfigError) as caught:
        SimulatorConfig(**bad)
    assert caught.value.problems


def test_repr_shows_no_secret():
    config = SimulatorConfig(aksk={"AK1": "SK-SECRET"}, users={"ops": "PW-SECRET"})
    text = repr(config) + repr(Simulator(config))
    assert "SECRET" not in text
    assert "auth=on" in text


async def test_ground_truth_matches_what_list_and_detail_show(simulator: tuple[Simulator, str]):
    sim, base = simulator
    stepped = await call("POST", f"{base}/_sim/step", params={"changes": 300})
    log = (await call("GET", f"{base}/_sim/changes")).json["changes"]
    expected: dict[str, dict[int, str]] = {pid: {} for pid in sim.project_ids}
    for change in log:
        jobs = expected[change["project_id"]]
        if change["kind"] == "deleted":
            del jobs[change["job_id"]]
        else:
            jobs[change["job_id"]] = change["status_after"]
    assert len(stepped.json["changes"]) == 300
    assert log[-300:] == stepped.json["changes"]
    for pid, jobs in expected.items():
        rows = await list_all(base, pid)
        assert {r["job_id"]: r["status"] for r in rows} == jobs
        job_id = max(jobs)
        detail = (await call("GET", jobs_url(base, pid, job_id))).json["job_detail"]
        assert detail["status"] == jobs[job_id]


async def test_changes_since_returns_only_later_changes(simulator: tuple[Simulator, str]):
    sim, base = simulator
    sim.step(5)
    later = (await call("GET", f"{base}/_sim/changes", params={"since": 30})).json["changes"]
    assert [c["seq"] for c in later] == [31, 32, 33, 34, 35]
    assert later == [c.as_dict() for c in sim.changes(30)]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/_sim/changes?since=x"), ("POST", "/_sim/step?changes=-1")]
)
async def test_control_endpoints_reject_bad_numbers(simulator: tuple[Simulator, str], method, path):
    _, base = simulator
    assert (await call(method, base + path)).status == 400


async def test_background_walk_changes_jobs_while_serving(make_simulator: MakeSimulator):
    async with make_simulator(change_rate=200.0) as (sim, base):
        start = len(sim.changes())
        seen: list[Any] = []
        for _ in range(400):  # up to 20 s on a busy machine; usually a few ticks
            seen = (await call("GET", f"{base}/_sim/changes?since={start}")).json["changes"]
            if len(seen) >= 10:
                break
            await asyncio.sleep(0.05)
    assert len(seen) >= 10
    assert all(c["seq"] > start for c in seen)


async def test_cli_simulate_serves_until_sigterm():
    args = ["simulate", "--projects", "2", "--jobs-per-project", "3", "--seed", "5", "--port", "0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        base = re.fullmatch(r"simulator: (http://127\.0\.0\.1:\d+)\n", line)
        assert base is not None, line
        pid = Simulator(SimulatorConfig(projects=2, jobs_per_project=3, seed=5)).project_ids[1]
        reply = await call("GET", jobs_url(base.group(1), pid))
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            code = await proc.wait()
    assert reply.json["job_list"]["total_count"] == 3
    assert code == 0


async def test_taken_port_is_a_config_error(simulator: tuple[Simulator, str]):
    _, base = simulator
    second = Simulator(SimulatorConfig(projects=1, jobs_per_project=0))
    with pytest.raises(ConfigError, match="cannot serve"):
        async with second.serve(port=URL(base).port or 0):
            pass
