"""Typed, tolerant pydantic views of DLI Flink job and IAM project responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

# A JSON object as orjson gives it: what snapshots are.
JsonDict = dict[str, Any]

__all__ = [
    "ApiModel",
    "Fetched",
    "JobConfig",
    "JobDetail",
    "JobDetailResponse",
    "JobList",
    "JobListItem",
    "JobListResponse",
    "JobRow",
    "JobRows",
    "JobRowsResponse",
    "JsonDict",
    "Project",
    "ProjectListResponse",
]


def _parse_flag(value: object) -> object:
    # The docs type is_success as the string "true"/"false"; the SDKs decode a JSON bool.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


Flag = Annotated[bool, BeforeValidator(_parse_flag)]


class ApiModel(BaseModel):
    """Base of every API model: unknown fields are kept, instances are read-only."""

    model_config = ConfigDict(extra="allow", frozen=True)


class JobConfig(ApiModel):
    """``job_config`` of a job (seed Table 4); every field may be absent or null."""

    checkpoint_enabled: bool | None = None
    checkpoint_interval: int | None = None
    checkpoint_mode: str | None = None
    log_enabled: bool | None = None
    obs_bucket: str | None = None
    root_id: int | None = None
    edge_group_ids: list[str] | None = None
    manager_cu_number: int | None = None
    graph_editor_enabled: bool | None = None
    graph_editor_data: str | None = None
    executor_number: int | None = None
    executor_cu_number: int | None = None
    cu_number: int | None = None
    parallel_number: int | None = None
    smn_topic: str | None = None
    restart_when_exception: bool | None = None
    resume_checkpoint: bool | None = None
    resume_max_num: int | None = None
    checkpoint_path: str | None = None
    idle_state_retention: int | None = None
    config_url: str | None = None
    udf_jar_url: str | None = None
    dirty_data_strategy: str | None = None
    entrypoint: str | None = None
    dependency_jars: list[str] | None = None
    dependency_files: list[str] | None = None
    tm_cus: int | None = None
    tm_slot_num: int | None = None
    image: str | None = None
    feature: str | None = None
    flink_version: str | None = None
    operator_config: str | None = None
    static_estimator_config: str | None = None
    runtime_config: str | None = None
    real_cu_number: int | None = None


class _JobFields(ApiModel):
    """Fields shared by a job detail (seed Table 3) and a job list row (reference §1.3).

    Times are milliseconds since the epoch. ``status`` stays a plain string so a status
    DLI adds later does not make the whole response invalid.
    """

    name: str | None = None
    desc: str | None = None
    job_type: str | None = None
    status: str | None = None
    status_desc: str | None = None
    create_time: int | None = None
    start_time: int | None = None
    user_id: str | None = None
    user_name: str | None = None
    queue_name: str | None = None
    project_id: str | None = None
    sql_body: str | None = None
    savepoint_path: str | None = None
    run_mode: str | None = None
    job_config: JobConfig | None = None
    main_class: str | None = None
    entrypoint_args: str | None = None
    execution_graph: str | None = None
    update_time: int | None = None
    duration: int | None = None
    root_id: int | None = None
    graph_editor_enabled: bool | None = None
    has_savepoint: bool | None = None
    edge_group_ids: list[str] | None = None
    restart_times: int | None = None


class JobDetail(_JobFields):
    """``job_detail`` of ``GET /v1.0/{project_id}/streaming/jobs/{job_id}``."""

    job_id: int | None = None


class JobListItem(_JobFields):
    """One row of ``job_list.jobs``; the SDK marks ``job_id`` required and paging dedupes on it."""

    job_id: int


class JobRow(BaseModel):
    """A list row as the engine reads it before deciding anything: the id paging dedupes on
    and the fields filters and plans use. Everything else stays in the raw row, validated
    (as ``JobListItem``) only when a row becomes a snapshot: most rows of a sweep are
    unchanged, and validating all of them was a quarter of the engine's CPU at 100k jobs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: int
    name: str | None = None
    status: str | None = None
    job_type: str | None = None
    queue_name: str | None = None


class JobRows(BaseModel):
    """``job_list`` with lean rows (see ``JobRow``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    jobs: list[JobRow] | None = None


class JobRowsResponse(BaseModel):
    """A list body with lean rows (see ``JobRow``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    is_success: Flag | None = None
    message: str | None = None
    job_list: JobRows | None = None


class JobDetailResponse(ApiModel):
    """Body of the job detail call (seed Table 2)."""

    is_success: Flag | None = None
    message: str | None = None
    job_detail: JobDetail | None = None


class JobList(ApiModel):
    """``job_list``: ``total_count`` is the overall match count, ``jobs`` one page of rows."""

    total_count: int | None = None
    jobs: list[JobListItem] | None = None


class JobListResponse(ApiModel):
    """Body of ``GET /v1.0/{project_id}/streaming/jobs``."""

    is_success: Flag | None = None
    message: str | None = None
    job_list: JobList | None = None


class Project(ApiModel):
    """An IAM project (one per region and sub-project) from ``GET /v3/auth/projects``."""

    id: str
    name: str | None = None
    domain_id: str | None = None
    parent_id: str | None = None
    description: str | None = None
    enabled: bool | None = None
    is_domain: bool | None = None


class ProjectListResponse(ApiModel):
    """Body of ``GET /v3/auth/projects``."""

    projects: list[Project]


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Fetched(Generic[M]):
    """One resource as received: ``raw`` is what snapshots keep, ``model`` how code reads it."""

    raw: dict[str, Any]
    model: M
