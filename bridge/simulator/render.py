"""A simulated job as DLI's documented JSON: light and detailed list rows, detail, job_config.

The three shapes, after the reference notes (dli-api.md §1.3, the official SDK's ``FlinkJob``):

- light row (``show_detail=false``): the common fields plus ``user_name``, ``duration`` and
  ``root_id``; ``start_time`` is 0 for a job that never started.
- detailed row (``show_detail=true``, what ``sweep`` mode reads): the common fields plus the
  detail fields (``user_id``, ``project_id``, ``sql_body``, ``run_mode``, ``job_config``,
  ``main_class``, ``entrypoint_args``, ``execution_graph``, ``update_time``); the light-only
  ``user_name``, ``duration`` and ``root_id`` are left out.
- detail (Job Details): everything the detailed row has plus ``user_name`` and ``root_id``
  (``duration`` is documented for light rows only, and volatile).

So a detailed row equals the detail minus ``SWEEP_ROW_OMITS``; everything else, including
``job_config`` and ``start_time`` (``null`` when never started), is the same value.

Credentials, as real job bodies carry them: every job whose ``variant`` is a multiple of 3
holds secrets (``has_secrets``) — a SQL body with connector passwords in every spelling users
write (JAAS, JDBC option and URL, OBS keys, a commented-out option, a two-line mixed-case
key), ``runtime_config``/``operator_config`` strings, and jar arguments. ``SECRETS`` lists
each value as it appears in the body; ``jdbc_password(rev)`` is the JDBC password after
``rev`` rotations (``update_job(..., secret_rev=n)``).
"""

from __future__ import annotations

from bridge.models import JsonDict
from bridge.simulator.records import Job

__all__ = [
    "SECRETS",
    "SWEEP_ROW_OMITS",
    "detail",
    "detail_row",
    "has_secrets",
    "jdbc_password",
    "job_config",
    "light_row",
]

# Fields of the Job Details answer that a ``show_detail=true`` list row does not carry: the
# engine leaves them out when it compares a sweep row with a detail snapshot.
SWEEP_ROW_OMITS: tuple[str, ...] = ("root_id", "user_name")

# Shared texts a job's ``variant`` picks from, so 100k jobs hold no copies.
_SQL = (
    "CREATE TABLE src (id BIGINT, amount DOUBLE) WITH ('connector' = 'kafka', 'topic' = 'orders');"
    "\nCREATE TABLE dst (id BIGINT, total DOUBLE) WITH ('connector' = 'dws');"
    "\nINSERT INTO dst SELECT id, SUM(amount) FROM src GROUP BY id;",
    "CREATE TABLE clicks (url STRING, ts TIMESTAMP(3)) WITH ('connector' = 'dis');"
    "\nINSERT INTO print_sink SELECT url, COUNT(*) FROM clicks GROUP BY url, "
    "TUMBLE(ts, INTERVAL '1' MINUTE);",
)
_SECRET_SQL = (
    "CREATE TABLE src (id BIGINT, amount DOUBLE) WITH (\n"
    "  'connector' = 'kafka',\n"
    "  'topic' = 'orders',\n"
    "  'properties.sasl.jaas.config' = 'org.apache.kafka.common.security.scram.ScramLoginModule"
    ' required username="etl" password="SimKafkaPw-01";\',\n'
    "  'properties.ssl.truststore.password' = 'SimTrustPw-02'\n"
    ");\n"
    "CREATE TABLE dim (id BIGINT, name STRING) WITH (\n"
    "  'connector' = 'jdbc',\n"
    "  'url' = 'jdbc:mysql://db:3306/crm?user=reader&password=SimUrlPw-04',\n"
    "  'username' = 'reader',\n"
    "  'password' = '{jdbc}'\n"
    "  -- 'password' = 'SimOldPw-07'\n"
    ");\n"
    "CREATE TABLE archive (id BIGINT) WITH (\n"
    "  'connector' = 'filesystem', 'path' = 'obs://bucket/archive',\n"
    "  'fs.obs.access.key' = 'SIMAKOBS05', 'fs.obs.secret.key' = 'SimObsSk-06'\n"
    ");\n"
    "CREATE TABLE cache (k STRING, v STRING) WITH ('connector' = 'redis', 'PassWord'\n"
    "  = 'SimRedisPw-08');\n"
    "INSERT INTO archive SELECT id FROM src;"
)
_SECRET_RUNTIME_CONFIG = '[{"key":"fs.obs.secret.key","value":"SimRuntimeSk-09"}]'
_SECRET_OPERATOR_CONFIG = '{"sink.password": "SimOpPw-10"}'
_SECRET_ARGS = "--password SimArgPw-11 --sk=SimArgSk-12 -Dfs.obs.secret.key=SimArgSk-13 --env prod"
# Each secret as its bytes appear in a body (the JDBC one with its SQL-doubled quote).
SECRETS: tuple[str, ...] = (
    "SimKafkaPw-01", "SimTrustPw-02", "SimJdbc''Pw-03", "SimUrlPw-04", "SIMAKOBS05",
    "SimObsSk-06", "SimOldPw-07", "SimRedisPw-08", "SimRuntimeSk-09", "SimOpPw-10",
    "SimArgPw-11", "SimArgSk-12", "SimArgSk-13",
)  # fmt: skip


def jdbc_password(rev: int) -> str:
    """The JDBC password (as written in SQL) after ``rev`` rotations."""
    return "SimJdbc''Pw-03" if rev == 0 else f"SimJdbc''Pw-03r{rev}"


def has_secrets(job: Job) -> bool:
    """Whether ``job`` renders with credentials in its body."""
    return job.variant % 3 == 0


_MAIN_CLASSES = ("com.example.flink.OrdersJob", "org.apache.flink.examples.WordCount")
_JARS = ("FemaleInfoCollection.jar", "stream-etl-1.4.2.jar", "flink-cdc-job.jar")
_FLINK_VERSIONS = ("1.15", "1.12", "1.17")
_EXECUTION_GRAPH = '{"nodes":[{"id":1,"operator":"Source: src"},{"id":2,"operator":"Sink: dst"}]}'
_LIGHT_KEYS = frozenset({"user_name", "duration", "root_id"})
_DETAIL_ROW_KEYS = frozenset(
    {"user_id", "project_id", "sql_body", "run_mode", "job_config", "main_class",
     "entrypoint_args", "execution_graph", "update_time"}
)  # fmt: skip
_SHAPED = _LIGHT_KEYS | _DETAIL_ROW_KEYS


def _common(job: Job) -> JsonDict:
    """Fields every shape carries (list rows with or without show_detail, and the detail)."""
    savepoint = job.savepoint_at
    return {
        "job_id": job.job_id,
        "name": job.name,
        "desc": job.desc,
        "job_type": job.job_type,
        "status": job.status.value,
        "status_desc": job.status_desc,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "queue_name": job.queue_name,
        "graph_editor_enabled": job.job_type == "flink_sql_job" and job.variant % 2 == 0,
        "has_savepoint": savepoint is not None,
        "savepoint_path": None
        if savepoint is None
        else f"obs://{_bucket(job)}/savepoints/{job.job_id}/savepoint-{savepoint}",
        "edge_group_ids": _edge_groups(job),
        "restart_times": job.restart_times,
    }


def _bucket(job: Job) -> str:
    return f"dli-{job.project.id[:12]}"


def _edge_groups(job: Job) -> list[str] | None:
    if job.run_mode != "edge_node":
        return None
    return [f"{job.project.id[:8]}-edge-{job.variant}"]


def _with_extra(row: JsonDict, job: Job, own: frozenset[str]) -> JsonDict:
    """Hand-set fields override the rendered ones; unknown ones appear in every shape."""
    for key, value in (job.extra or {}).items():
        if key != "job_config" and (key in own or key not in _SHAPED):
            row[key] = value
    return row


def light_row(job: Job, now_ms: int) -> JsonDict:
    """A list row with ``show_detail=false`` (reference §1.3); ``start_time`` 0 = never started."""
    row = _common(job)
    row["start_time"] = job.start_time or 0
    row["user_name"] = job.user_name
    row["duration"] = job.duration(now_ms)
    row["root_id"] = job.root_id
    return _with_extra(row, job, _LIGHT_KEYS)


def detail_row(job: Job) -> JsonDict:
    """A list row with ``show_detail=true``: the detail fields, no user_name/duration/root_id."""
    row = _common(job)
    row.update(_detail_fields(job))
    return _with_extra(row, job, _DETAIL_ROW_KEYS)


def detail(job: Job) -> JsonDict:
    """``job_detail`` of the Job Details call: Tables 3 and 4 of the seed, except ``duration``
    (documented for light list rows only, and volatile)."""
    row = _common(job)
    row.update(_detail_fields(job))
    row["user_name"] = job.user_name
    row["root_id"] = job.root_id
    return _with_extra(row, job, _SHAPED - {"duration"})


def _detail_fields(job: Job) -> JsonDict:
    jar = job.job_type == "flink_jar_job"
    started = job.start_time is not None
    return {
        "user_id": job.project.users.get(job.user_name, ""),
        "project_id": job.project.id,
        "sql_body": "" if jar else _sql_body(job),
        "run_mode": job.run_mode,
        "job_config": job_config(job),
        "main_class": _MAIN_CLASSES[job.variant % 2] if jar else None,
        "entrypoint_args": _SECRET_ARGS if jar and has_secrets(job) else None,
        "execution_graph": _EXECUTION_GRAPH if started and not jar else None,
        "update_time": job.update_time,
    }


def _sql_body(job: Job) -> str:
    if has_secrets(job):
        return _SECRET_SQL.replace("{jdbc}", jdbc_password(job.secret_rev))
    return _SQL[job.variant % len(_SQL)]


def job_config(job: Job) -> JsonDict:
    """Table 4: the job's configuration, from its knobs plus shared per-variant values."""
    jar, v = job.job_type == "flink_jar_job", job.variant
    checkpoint, logs = job.flag("checkpoint_enabled"), job.flag("log_enabled")
    bucket = _bucket(job)
    config: JsonDict = {
        "checkpoint_enabled": checkpoint,
        "checkpoint_interval": job.checkpoint_interval,
        "checkpoint_mode": "exactly_once" if v % 3 else "at_least_once",
        "log_enabled": logs,
        "obs_bucket": bucket if logs or checkpoint else None,
        "root_id": job.root_id,
        "edge_group_ids": _edge_groups(job),
        "manager_cu_number": 1,
        "graph_editor_enabled": False,
        "graph_editor_data": "",
        "executor_number": None,
        "executor_cu_number": None,
        "cu_number": job.cu_number,
        "parallel_number": job.parallel_number,
        "smn_topic": "dli_job_alarm" if v % 4 == 0 else None,
        "restart_when_exception": job.flag("restart_when_exception"),
        "resume_checkpoint": job.flag("resume_checkpoint"),
        "resume_max_num": -1 if job.flag("restart_when_exception") else 0,
        "checkpoint_path": f"obs://{bucket}/checkpoints/{job.job_id}" if checkpoint else None,
        "idle_state_retention": 3600,
        "config_url": None,
        "udf_jar_url": None if jar or v % 2 else "udf/flink-udf-1.0.jar",
        "dirty_data_strategy": None if jar else "0",
        "entrypoint": _JARS[v % len(_JARS)] if jar else None,
        "dependency_jars": [_JARS[(v + 1) % len(_JARS)]] if jar and v % 2 else None,
        "dependency_files": None,
        "tm_cus": 1,
        "tm_slot_num": job.parallel_number,
        "image": None,
        "feature": "basic",
        "flink_version": _FLINK_VERSIONS[v % len(_FLINK_VERSIONS)],
        "operator_config": _SECRET_OPERATOR_CONFIG if has_secrets(job) else None,
        "static_estimator_config": None,
        "runtime_config": _SECRET_RUNTIME_CONFIG if has_secrets(job) else None,
        "real_cu_number": 0,
    }
    config.update((job.extra or {}).get("job_config", {}))
    return config
