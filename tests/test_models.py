"""The API models read the seed's example responses verbatim and tolerate what DLI may send."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from bridge.models import (
    JobConfig,
    JobDetail,
    JobDetailResponse,
    JobListItem,
    JobListResponse,
    ProjectListResponse,
)

# Seed "Querying Job Details", example responses, verbatim.
SEED_JAR_JOB = b"""
{
    "is_success": "true",
    "message": "Job detail query succeeds.",
    "job_detail": {
        "job_id": 104,
        "user_id": "011c99a26ae84a1bb963a75e7637d3fd",
        "queue_name": "flinktest",
        "project_id": "330e068af1334c9782f4226acc00a2e2",
        "name": "jptest",
        "desc": "",
        "sql_body": "",
        "run_mode": "exclusive_cluster",
        "job_type": "flink_jar_job",
        "job_config": {
            "checkpoint_enabled": false,
            "checkpoint_interval": 10,
            "checkpoint_mode": "exactly_once",
            "log_enabled": false,
            "obs_bucket": null,
            "root_id": -1,
            "edge_group_ids": null,
            "graph_editor_enabled": false,
            "graph_editor_data": "",
            "manager_cu_number": 1,
            "executor_number": null,
            "executor_cu_number": null,
            "cu_number": 2,
            "parallel_number": 1,
            "smn_topic": null,
            "restart_when_exception": false,
            "idle_state_retention": 3600,
            "config_url": null,
            "udf_jar_url": null,
            "dirty_data_strategy": null,
            "entrypoint": "FemaleInfoCollection.jar",
            "dependency_jars": [
                "FemaleInfoCollection.jar",
                "ObsBatchTest.jar"
            ],
            "dependency_files": [
                "FemaleInfoCollection.jar",
                "ReadFromResource"
            ]
        },
        "main_class": null,
        "entrypoint_args": null,
        "execution_graph": null,
        "status": "job_init",
        "status_desc": "",
        "create_time": 1578466221525,
        "update_time": 1578467395713,
        "start_time": null
    }
}
"""

SEED_OPENSOURCE_SQL_JOB = b"""
{
    "is_success": "true",
    "message": "The job information query succeeds.",
    "job_detail": {
        "job_type": "flink_opensource_sql_job",
        "status_desc": "",
        "create_time": 1637632872828,
        "sql_body": "xxx",
        "savepoint_path": null,
        "main_class": null,
        "queue_name": "xie_container_general",
        "execution_graph": "xxx",
        "start_time": 1638433497621,
        "update_time": 1638449337993,
        "job_config": {
            "checkpoint_enabled": true,
            "checkpoint_interval": 600,
            "checkpoint_mode": "exactly_once",
            "log_enabled": true,
            "obs_bucket": "dli-test",
            "root_id": -1,
            "edge_group_ids": null,
            "graph_editor_enabled": false,
            "graph_editor_data": "",
            "manager_cu_number": 1,
            "executor_number": null,
            "executor_cu_number": null,
            "cu_number": 2,
            "parallel_number": 3,
            "smn_topic": "",
            "restart_when_exception": true,
            "resume_checkpoint": true,
            "resume_max_num": -1,
            "checkpoint_path": null,
            "idle_state_retention": 3600,
            "config_url": null,
            "udf_jar_url": "test/flink_test-1.0-SNAPSHOT-jar-with-dependencies.jar",
            "dirty_data_strategy": "0",
            "entrypoint": "test/flink_test-1.0-SNAPSHOT-jar-with-dependencies.jar",
            "dependency_jars": null,
            "dependency_files": null,
            "tm_cus": 1,
            "tm_slot_num": 3,
            "image": null,
            "feature": null,
            "flink_version": null,
            "operator_config": "xxx",
            "static_estimator_config": "xxx",
            "runtime_config": null
        },
        "user_id": "xxx",
        "project_id": "xxx",
        "run_mode": "exclusive_cluster",
        "job_id": 90634,
        "name": "test_guoquan",
        "desc": "",
        "entrypoint_args": null,
        "status": "job_cancel_success"
    }
}
"""

# Seed Table 3 and Table 4: every documented field name.
TABLE_3 = [
    "job_id",
    "name",
    "desc",
    "job_type",
    "status",
    "status_desc",
    "create_time",
    "start_time",
    "user_id",
    "queue_name",
    "project_id",
    "sql_body",
    "savepoint_path",
    "run_mode",
    "job_config",
    "main_class",
    "entrypoint_args",
    "execution_graph",
    "update_time",
    "user_name",
    "duration",
    "root_id",
    "graph_editor_enabled",
    "has_savepoint",
    "edge_group_ids",
    "restart_times",
]
TABLE_4 = [
    "checkpoint_enabled",
    "checkpoint_interval",
    "checkpoint_mode",
    "log_enabled",
    "obs_bucket",
    "root_id",
    "edge_group_ids",
    "manager_cu_number",
    "graph_editor_enabled",
    "graph_editor_data",
    "executor_number",
    "executor_cu_number",
    "cu_number",
    "parallel_number",
    "smn_topic",
    "restart_when_exception",
    "resume_checkpoint",
    "resume_max_num",
    "checkpoint_path",
    "idle_state_retention",
    "config_url",
    "udf_jar_url",
    "dirty_data_strategy",
    "entrypoint",
    "dependency_jars",
    "dependency_files",
    "tm_cus",
    "tm_slot_num",
    "image",
    "feature",
    "flink_version",
    "operator_config",
    "static_estimator_config",
    "runtime_config",
    "real_cu_number",
]
# Reference §1.3: every row field of the job list.
LIST_ROW = [
    "job_id",
    "name",
    "desc",
    "user_name",
    "job_type",
    "status",
    "status_desc",
    "create_time",
    "start_time",
    "duration",
    "root_id",
    "graph_editor_enabled",
    "has_savepoint",
    "queue_name",
    "edge_group_ids",
    "restart_times",
    "savepoint_path",
    "user_id",
    "project_id",
    "sql_body",
    "run_mode",
    "job_config",
    "main_class",
    "entrypoint_args",
    "execution_graph",
    "update_time",
]


def _detail(body: bytes) -> JobDetailResponse:
    return JobDetailResponse.model_validate(orjson.loads(body))


@pytest.mark.parametrize(
    ("model", "fields"),
    [(JobDetail, TABLE_3), (JobConfig, TABLE_4), (JobListItem, LIST_ROW)],
)
def test_model_declares_every_documented_field(model, fields):
    assert set(fields) <= set(model.model_fields)


@pytest.mark.parametrize(
    ("body", "job_id", "status", "start_time", "job_type"),
    [
        (SEED_JAR_JOB, 104, "job_init", None, "flink_jar_job"),
        (
            SEED_OPENSOURCE_SQL_JOB,
            90634,
            "job_cancel_success",
            1638433497621,
            "flink_opensource_sql_job",
        ),
    ],
)
def test_detail_reads_seed_example(body, job_id, status, start_time, job_type):
    parsed = _detail(body)
    assert parsed.is_success is True
    detail = parsed.job_detail
    assert detail is not None
    assert (detail.job_id, detail.status, detail.start_time, detail.job_type) == (
        job_id,
        status,
        start_time,
        job_type,
    )
    assert detail.job_config is not None
    assert detail.job_config.root_id == -1


def test_detail_reads_seed_config_values():
    config = _detail(SEED_OPENSOURCE_SQL_JOB).job_detail.job_config  # type: ignore[union-attr]
    assert config is not None
    assert config.resume_max_num == -1
    assert config.dirty_data_strategy == "0"
    assert config.udf_jar_url == "test/flink_test-1.0-SNAPSHOT-jar-with-dependencies.jar"
    assert config.dependency_jars is None
    assert config.tm_slot_num == 3


def test_detail_round_trips_seed_example_without_loss():
    raw = orjson.loads(SEED_JAR_JOB)
    dumped = _detail(SEED_JAR_JOB).model_dump(mode="json", exclude_unset=True)
    assert dumped["is_success"] is True  # normalised from the string "true"
    assert dumped["job_detail"] == raw["job_detail"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        (" False ", False),
        (True, True),
        (False, False),
        (None, None),
    ],
)
def test_is_success_accepts_strings_and_bools(value, expected):
    assert JobDetailResponse.model_validate({"is_success": value}).is_success is expected
    assert JobListResponse.model_validate({"is_success": value}).is_success is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, [], {}])
def test_is_success_rejects_other_values(value):
    with pytest.raises(ValidationError):
        JobDetailResponse.model_validate({"is_success": value})


def test_unknown_fields_are_kept_at_every_level():
    doc: dict[str, Any] = {
        "is_success": True,
        "future_top": 1,
        "job_detail": {"job_id": 1, "new_field": "x", "job_config": {"new_knob": [1, 2]}},
    }
    parsed = JobDetailResponse.model_validate(doc)
    assert parsed.model_extra == {"future_top": 1}
    assert parsed.job_detail is not None
    assert parsed.job_detail.model_extra == {"new_field": "x"}
    assert parsed.job_detail.job_config is not None
    assert parsed.job_detail.job_config.model_extra == {"new_knob": [1, 2]}


def test_unknown_status_is_kept_as_text():
    item = JobListItem.model_validate({"job_id": 7, "status": "job_teleporting"})
    assert item.status == "job_teleporting"


def test_empty_detail_answer_is_valid():
    parsed = JobDetailResponse.model_validate({})
    assert (parsed.is_success, parsed.message, parsed.job_detail) == (None, None, None)


@pytest.mark.parametrize(
    "row",
    [
        {"name": "no id"},
        {"job_id": "not-a-number"},
        {"job_id": 1, "create_time": "yesterday"},
        {"job_id": 1, "job_config": "not an object"},
        {"job_id": 1, "edge_group_ids": "a,b"},
    ],
)
def test_list_row_rejects_schema_breaking_values(row):
    with pytest.raises(ValidationError):
        JobListItem.model_validate(row)


def test_list_response_reads_light_rows():
    doc = {
        "is_success": "true",
        "message": "",
        "job_list": {
            "total_count": 26,
            "jobs": [
                {
                    "job_id": 148,
                    "name": "test",
                    "desc": "",
                    "user_name": "u",
                    "job_type": "flink_sql_job",
                    "status": "job_running",
                    "status_desc": "",
                    "create_time": 1534851551000,
                    "start_time": 0,
                    "duration": 0,
                    "root_id": -1,
                    "graph_editor_enabled": False,
                    "has_savepoint": False,
                },
            ],
        },
    }
    parsed = JobListResponse.model_validate(doc)
    assert parsed.job_list is not None
    assert parsed.job_list.total_count == 26
    assert parsed.job_list.jobs is not None
    row = parsed.job_list.jobs[0]
    assert (row.job_id, row.start_time, row.root_id, row.job_config) == (148, 0, -1, None)


def test_models_are_read_only():
    item = JobListItem(job_id=1)
    with pytest.raises(ValidationError):
        item.job_id = 2  # type: ignore[misc]


def test_project_list_reads_iam_example():
    doc = {
        "links": {"self": "https://iam.myhuaweicloud.com/v3/auth/projects"},
        "projects": [
            {
                "domain_id": "d78c",
                "is_domain": False,
                "parent_id": "d78c",
                "name": "af-south-1",
                "description": "",
                "links": {"self": "https://iam/v3/projects/06f1"},
                "id": "06f1",
                "enabled": True,
            },
        ],
    }
    parsed = ProjectListResponse.model_validate(doc)
    assert [(p.id, p.name, p.enabled) for p in parsed.projects] == [("06f1", "af-south-1", True)]
    assert parsed.projects[0].model_extra == {"links": {"self": "https://iam/v3/projects/06f1"}}
