"""The DLI simulator's server over real HTTP: list, detail, ground truth, controls and config."""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

import pytest
from yarl import URL

from bridge import cli
from bridge.errors import ConfigError
from bridge.simulator import Simulator, SimulatorConfig
from bridge.simulator.records import MAX_CHANGE_RATE, MAX_LATENCY_S
from bridge.simulator.server import MAX_STEP
from tests.fakes import T0, FakeClock
from tests.sim_calls import call, jobs_url, list_all
from tests.sim_fixtures import MakeSimulator
from tests.test_render import DETAIL_ROW, LIGHT_ROW, TABLE3, TABLE4

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
    "bad",
    [
        {"error_rate": 1.5},
        {"malformed_rate": -0.1},
        {"projects": -1},
        {"token_ttl_s": 0},
        {"change_rate": 1.0, "projects": 0},
        {"change_rate": 1e9},
        {"change_rate": float("inf")},
        {"change_rate": float("nan")},
        {"change_rate": -1.0},
        {"latency_s": float("inf")},
        {"latency_s": 61.0},
        {"throttle_per_s": 0.0},
        {"throttle_per_s": -1.0},
        {"throttle_per_s": float("inf")},
        {"error_rate": float("nan")},
        {"malformed_rate": float("inf")},
        {"token_ttl_s": float("nan")},
    ],
)
def test_config_validation_lists_problems(bad):
    with pytest.raises(ConfigError) as caught:
        SimulatorConfig(**bad)
    (problem,) = caught.value.problems
    assert next(iter(bad)) in problem


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


async def test_step_asks_for_a_bounded_number_of_changes(simulator: tuple[Simulator, str]):
    _, base = simulator
    reply = await call("POST", f"{base}/_sim/step", params={"changes": MAX_STEP + 1})
    assert reply.status == 400
    assert "changes" in reply.json["error_msg"]


async def test_step_on_a_fleet_without_projects_is_a_4xx_with_a_message(
    make_simulator: MakeSimulator,
):
    async with make_simulator(projects=0) as (_, base):
        reply = await call("POST", f"{base}/_sim/step")
    assert reply.status == 409
    assert "without projects" in reply.json["error_msg"]


@pytest.mark.parametrize(
    "body",
    [
        {"latency_s": 120},
        {"error_rate": 2},
        {"throttle_per_s": -1},
        {"project_id": "nope", "error_rate": 0.5},
        {"bogus": 1},
        [1],
    ],
)
async def test_faults_endpoint_refuses_bad_settings(simulator: tuple[Simulator, str], body):
    _, base = simulator
    reply = await call("POST", f"{base}/_sim/faults", json=body)
    assert 400 <= reply.status < 500
    assert reply.json["error"]


async def test_sim_jobs_shows_every_job_as_its_detail(simulator: tuple[Simulator, str]):
    sim, base = simulator
    pid = sim.project_ids[1]
    sim.step(40)
    jobs = (await call("GET", f"{base}/_sim/jobs", params={"project_id": pid})).json["jobs"]
    rows = await list_all(base, pid)
    assert {j["job_id"] for j in jobs} == {r["job_id"] for r in rows}
    for job in jobs:
        assert job == (await call("GET", jobs_url(base, pid, job["job_id"]))).json["job_detail"]


@pytest.mark.parametrize("query", [{}, {"project_id": "nope"}])
async def test_sim_jobs_needs_a_known_project(simulator: tuple[Simulator, str], query):
    _, base = simulator
    reply = await call("GET", f"{base}/_sim/jobs", params=query)
    assert 400 <= reply.status < 500
    assert reply.json["error_msg"]


async def test_fastest_walk_leaves_the_server_answering(make_simulator: MakeSimulator):
    """At the highest change rate HTTP still answers promptly and the walk keeps up."""
    async with make_simulator(projects=2, jobs_per_project=5, change_rate=MAX_CHANGE_RATE) as (
        sim,
        base,
    ):
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await call("GET", f"{base}/_sim/changes", params={"since": 10**9})
        answered_s = loop.time() - started
        made = len(sim.changes())
    assert reply.status == 200
    assert answered_s < 2.0
    assert made > 1000


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


@pytest.mark.parametrize("port", [-1, 70000])
async def test_port_outside_the_range_is_a_config_error(port):
    sim = Simulator(SimulatorConfig(projects=1, jobs_per_project=0))
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        async with sim.serve(port=port):
            pass


async def test_taken_port_is_a_config_error(simulator: tuple[Simulator, str]):
    _, base = simulator
    second = Simulator(SimulatorConfig(projects=1, jobs_per_project=0))
    with pytest.raises(ConfigError, match="cannot serve"):
        async with second.serve(port=URL(base).port or 0):
            pass


# --- the simulate command's edges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--change-rate", "1e9", "from 0 to 10000"),
        ("--change-rate", "inf", "from 0 to 10000"),
        ("--change-rate", "nan", "from 0 to 10000"),
        ("--change-rate", "-1", "from 0 to 10000"),
        ("--latency-ms", "inf", "from 0 to 60000"),
        ("--latency-ms", "60001", "from 0 to 60000"),
        ("--throttle-per-s", "0", "above 0"),
        ("--throttle-per-s", "-1", "above 0"),
        ("--throttle-per-s", "inf", "above 0"),
        ("--error-rate", "nan", "from 0 to 1"),
        ("--malformed-rate", "1.5", "from 0 to 1"),
        ("--port", "-1", "0 to 65535"),
        ("--port", "70000", "0 to 65535"),
    ],
)
def test_simulate_refuses_out_of_range_numbers(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as caught:
        cli.main(["simulate", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert f"argument {flag}" in err
    assert expected in err
    assert "Traceback" not in err


def test_cli_bounds_equal_the_simulators():
    assert cli._SIM_MAX_CHANGE_RATE == MAX_CHANGE_RATE
    assert cli._SIM_MAX_LATENCY_MS == MAX_LATENCY_S * 1000
