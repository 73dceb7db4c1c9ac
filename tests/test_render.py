"""How a simulated job renders as DLI's JSON: light rows, detailed rows (sweep), the detail."""

from __future__ import annotations

import pytest

from bridge.simulator.fleet import Fleet
from bridge.simulator.records import Job
from bridge.simulator.render import SWEEP_ROW_OMITS, detail, detail_row, light_row
from tests.fakes import T0

NOW_MS = int(T0 * 1000)

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


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(projects=2, jobs_per_project=40, seed=11, region="sim-1", now_ms=NOW_MS)


def _jobs(fleet: Fleet) -> list[Job]:
    return [job for project in fleet.projects.values() for job in project.ordered()]


def test_light_row_fields(fleet: Fleet):
    assert all(set(light_row(job, NOW_MS)) == LIGHT_ROW for job in _jobs(fleet))


def test_detail_row_fields_and_job_config(fleet: Fleet):
    rows = [detail_row(job) for job in _jobs(fleet)]
    assert all(set(row) == DETAIL_ROW for row in rows)
    assert all(set(row["job_config"]) == TABLE4 for row in rows)


def test_detail_fields(fleet: Fleet):
    details = [detail(job) for job in _jobs(fleet)]
    assert all(set(d) == TABLE3 - {"duration"} for d in details)  # duration: light rows only


def test_sweep_row_is_the_detail_minus_the_omitted_fields(fleet: Fleet):
    """What sweep mode reads equals the detail call, except the documented omissions."""
    for job in _jobs(fleet):
        whole = detail(job)
        assert detail_row(job) == {k: v for k, v in whole.items() if k not in SWEEP_ROW_OMITS}
        assert set(SWEEP_ROW_OMITS) <= set(whole)


def test_hand_set_unknown_fields_show_in_every_shape(fleet: Fleet):
    job = _jobs(fleet)[0]
    fleet.update(job.project.id, job.job_id, NOW_MS, new_field="x", job_config={"knob": 1})
    shapes = (light_row(job, NOW_MS), detail_row(job), detail(job))
    assert all(shape["new_field"] == "x" for shape in shapes)
    assert detail(job)["job_config"]["knob"] == detail_row(job)["job_config"]["knob"] == 1


def test_never_started_job_has_zero_start_in_light_rows_and_null_elsewhere(fleet: Fleet):
    pid = next(iter(fleet.projects))
    job = fleet.get(pid, fleet.create(pid, NOW_MS).job_id)
    assert (light_row(job, NOW_MS)["start_time"], light_row(job, NOW_MS)["duration"]) == (0, 0)
    assert detail_row(job)["start_time"] is None
    assert detail(job)["start_time"] is None


def test_jobs_with_secrets_carry_every_listed_credential(fleet):
    import orjson

    from bridge.simulator.render import SECRETS, has_secrets, jdbc_password

    bodies = b"".join(orjson.dumps(detail(job)) for job in fleet._all if has_secrets(job))
    assert all(s.encode() in bodies for s in SECRETS)
    sql_job = next(j for j in fleet._all if has_secrets(j) and j.job_type != "flink_jar_job")
    before = detail(sql_job)["sql_body"]
    fleet.update(sql_job.project.id, sql_job.job_id, NOW_MS, secret_rev=1)
    after = detail(sql_job)["sql_body"]
    assert jdbc_password(1) in after
    assert jdbc_password(1) not in before
    assert before.replace(jdbc_password(0), jdbc_password(1)) == after
