"""The DLI simulator over real HTTP: list, detail, IAM, AK/SK, faults, walk and ground truth."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from multidict import CIMultiDictProxy
from yarl import URL

from bridge.errors import ConfigError, JobNotFound
from bridge.lifecycle import is_legal
from bridge.simulator import Change, Simulator, SimulatorConfig
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
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Reply:
    def __init__(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> None:
        self.status, self.raw, self.headers = status, raw, headers

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


async def call(
    method: str,
    url: str,
    *,
    params: Mapping[str, str | int] | None = None,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    timeout_s: float = 10.0,
) -> Reply:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, params=params, headers=headers, json=json) as resp,
    ):
        return Reply(resp.status, await resp.read(), resp.headers)


def jobs_url(base: str, project_id: str, job_id: int | str | None = None) -> str:
    url = f"{base}/v1.0/{project_id}/streaming/jobs"
    return url if job_id is None else f"{url}/{job_id}"


async def list_all(base: str, project_id: str, **params: str | int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        query = {"offset": len(rows), "limit": 100, "order": "asc", **params}
        page = await call("GET", jobs_url(base, project_id), params=query)
        jobs = page.json["job_list"]["jobs"]
        if not jobs:
            return rows
        rows += jobs


def password_body(scope: Any, user: str = "ops", password: str = "pw") -> Any:
    user_doc = {"name": user, "password": password, "domain": {"name": "sim-domain"}}
    identity = {"methods": ["password"], "password": {"user": user_doc}}
    return {"auth": {"identity": identity, "scope": scope}}


async def token_for(base: str, project_id: str) -> str:
    reply = await call(
        "POST", f"{base}/v3/auth/tokens", json=password_body({"project": {"id": project_id}})
    )
    assert reply.status == 201
    return reply.headers["X-Subject-Token"]


def signed(
    base: str, path: str, query: list[tuple[str, str]], ak: str, sk: str, date: str | None = None
) -> tuple[str, dict[str, str]]:
    """Sign with Huawei's own SDK signer (independent of bridge.auth)."""
    url = URL(base)
    headers = {"X-Sdk-Date": date} if date else {}
    host = f"{url.host}:{url.port}"
    request = SdkRequest("GET", "http", host, path, query_params=query, header_params=headers)
    Signer(BasicCredentials(ak, sk)).sign(request)
    return base + request.uri, dict(request.header_params)


def is_gateway_error(reply: Reply, status: int, code: str) -> bool:
    body = reply.json
    return (
        reply.status == status
        and body["error_code"] == code
        and body["request_id"] == reply.headers["X-Request-Id"]
    )


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


async def test_unknown_project_is_403_apig_0310(simulator: tuple[Simulator, str]):
    _, base = simulator
    for url in (jobs_url(base, "f" * 32), jobs_url(base, "f" * 32, 1)):
        assert is_gateway_error(await call("GET", url), 403, "APIG.0310")


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v2/jobs"), ("POST", "/v1.0/{pid}/streaming/jobs")]
)
async def test_unknown_api_is_404_apig_0101(simulator: tuple[Simulator, str], method, path):
    sim, base = simulator
    reply = await call(method, base + path.format(pid=sim.project_ids[0]))
    assert is_gateway_error(reply, 404, "APIG.0101")


async def test_every_response_has_its_own_request_id(simulator: tuple[Simulator, str]):
    sim, base = simulator
    pid = sim.project_ids[0]
    replies = [
        await call("GET", url) for url in (jobs_url(base, pid), jobs_url(base, pid, 1), base + "/x")
    ]
    ids = [r.headers["X-Request-Id"] for r in replies]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 3


# --- IAM tokens and project listing -------------------------------------------------------------


@pytest.mark.parametrize("scope", ["project_id", "project_name", "domain"])
async def test_password_token_is_issued_for_each_scope(make_simulator: MakeSimulator, scope):
    clock = FakeClock()
    async with make_simulator(users={"ops": "pw"}, token_ttl_s=3600, clock=clock) as (sim, base):
        pid = sim.project_ids[0]
        doc = {
            "project_id": {"project": {"id": pid}},
            "project_name": {"project": {"name": "sim-1"}},
            "domain": {"domain": {"name": "sim-domain"}},
        }[scope]
        reply = await call("POST", f"{base}/v3/auth/tokens", json=password_body(doc))
    token = reply.json["token"]
    assert reply.status == 201
    assert reply.headers["X-Subject-Token"].startswith("MII")
    assert token["methods"] == ["password"]
    assert (token["issued_at"], token["expires_at"]) == (
        "2023-11-14T22:13:20.000000Z",
        "2023-11-14T23:13:20.000000Z",
    )
    assert {e["type"] for e in token["catalog"]} == {"dli", "iam"}
    assert token["user"]["name"] == "ops"
    if scope == "domain":
        assert token["domain"]["name"] == "sim-domain"
    else:
        assert (token["project"]["id"], token["project"]["name"]) == (pid, "sim-1")


async def test_nocatalog_drops_the_catalog(make_simulator: MakeSimulator):
    async with make_simulator(users={"ops": "pw"}) as (sim, base):
        body = password_body({"project": {"id": sim.project_ids[0]}})
        reply = await call("POST", f"{base}/v3/auth/tokens?nocatalog=true", json=body)
    assert reply.status == 201
    assert "catalog" not in reply.json["token"]


@pytest.mark.parametrize(
    ("user", "password", "scope", "status"),
    [
        ("ops", "wrong", {"domain": {"name": "sim-domain"}}, 401),
        ("nobody", "pw", {"domain": {"name": "sim-domain"}}, 401),
        ("ops", "pw", {"project": {"name": "no-such-region"}}, 401),
        ("ops", "pw", {"domain": {"name": "other-account"}}, 401),
    ],
)
async def test_token_is_refused_in_iam_error_shape(
    make_simulator: MakeSimulator, user, password, scope, status
):
    async with make_simulator(users={"ops": "pw"}) as (_, base):
        reply = await call(
            "POST", f"{base}/v3/auth/tokens", json=password_body(scope, user, password)
        )
    assert reply.status == status
    assert reply.json["error"]["code"] == status
    assert "X-Subject-Token" not in reply.headers
    assert "pw" not in reply.raw.decode()


async def test_token_request_without_auth_object_is_400(make_simulator: MakeSimulator):
    async with make_simulator(users={"ops": "pw"}) as (_, base):
        reply = await call("POST", f"{base}/v3/auth/tokens", json={"identity": {}})
    assert (reply.status, reply.json["error"]["code"]) == (400, 400)


async def test_token_opens_only_its_own_project(make_simulator: MakeSimulator):
    async with make_simulator(users={"ops": "pw"}) as (sim, base):
        token = await token_for(base, sim.project_ids[0])
        own = await call("GET", jobs_url(base, sim.project_ids[0]), headers={"X-Auth-Token": token})
        other = await call(
            "GET", jobs_url(base, sim.project_ids[1]), headers={"X-Auth-Token": token}
        )
    assert own.status == 200
    assert is_gateway_error(other, 403, "APIG.0302")


@pytest.mark.parametrize("how", ["ttl", "expire_tokens", "http"])
async def test_expired_token_is_401_token_expires(make_simulator: MakeSimulator, how):
    clock = FakeClock()
    async with make_simulator(users={"ops": "pw"}, token_ttl_s=60, clock=clock) as (sim, base):
        pid = sim.project_ids[0]
        token = await token_for(base, pid)
        assert (
            await call("GET", jobs_url(base, pid), headers={"X-Auth-Token": token})
        ).status == 200
        if how == "ttl":
            clock.now += 61
        elif how == "expire_tokens":
            sim.expire_tokens()
        else:
            await call("POST", f"{base}/_sim/expire-tokens")
        reply = await call("GET", jobs_url(base, pid), headers={"X-Auth-Token": token})
    assert is_gateway_error(reply, 401, "APIG.0301")
    assert reply.json["error_msg"].endswith("token expires")
    assert sim.requests[("unauthorized", pid)] == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({"X-Auth-Token": "MIIforged"}, "decrypt token fail"), ({}, "x-auth-token not found")],
)
async def test_unknown_or_missing_token_is_401(make_simulator: MakeSimulator, headers, reason):
    async with make_simulator(users={"ops": "pw"}) as (sim, base):
        reply = await call("GET", jobs_url(base, sim.project_ids[0], 1), headers=headers)
    assert is_gateway_error(reply, 401, "APIG.0301")
    assert reply.json["error_msg"].endswith(reason)


async def test_iam_lists_projects_to_a_domain_token(make_simulator: MakeSimulator):
    async with make_simulator(users={"ops": "pw"}, projects=4) as (sim, base):
        grant = await call(
            "POST", f"{base}/v3/auth/tokens", json=password_body({"domain": {"name": "sim-domain"}})
        )
        auth = {"X-Auth-Token": grant.headers["X-Subject-Token"]}
        mine = await call("GET", f"{base}/v3/auth/projects", headers=auth)
        named = await call(
            "GET", f"{base}/v3/projects", params={"name": "sim-1_proj002"}, headers=auth
        )
        anonymous = await call("GET", f"{base}/v3/projects")
    assert [p["id"] for p in mine.json["projects"]] == sim.project_ids
    assert [p["name"] for p in named.json["projects"]] == ["sim-1_proj002"]
    assert named.json["projects"][0]["domain_id"] == grant.json["token"]["domain"]["id"]
    assert is_gateway_error(anonymous, 401, "APIG.0301")
    assert (sim.requests[("auth_projects", "")], sim.requests[("projects", "")]) == (1, 2)


async def test_no_credentials_configured_means_no_auth(simulator: tuple[Simulator, str]):
    sim, base = simulator
    assert (await call("GET", jobs_url(base, sim.project_ids[0]))).status == 200
    assert (await call("GET", f"{base}/v3/auth/projects")).status == 200


# --- AK/SK --------------------------------------------------------------------------------------


async def test_aksk_signed_request_is_accepted(make_simulator: MakeSimulator):
    async with make_simulator(aksk={"AK1": "SK1"}) as (sim, base):
        pid = sim.project_ids[0]
        url, headers = signed(
            base, f"/v1.0/{pid}/streaming/jobs", [("limit", "3"), ("name", "a b&c")], "AK1", "SK1"
        )
        reply = await call("GET", url, headers=headers)
        iam_url, iam_headers = signed(base, "/v3/projects", [("name", "sim-1")], "AK1", "SK1")
        iam = await call("GET", iam_url, headers=iam_headers)
    assert reply.status == 200, reply.raw
    assert [p["id"] for p in iam.json["projects"]] == [sim.project_ids[0]]


@pytest.mark.parametrize(
    ("ak", "sk", "date", "tamper"),
    [
        ("AK1", "wrong", None, False),
        ("AK-unknown", "SK1", None, False),
        ("AK1", "SK1", "20200101T000000Z", False),  # X-Sdk-Date far from the server clock
        ("AK1", "SK1", None, True),  # query changed after signing
    ],
)
async def test_aksk_refusals_are_401_apig_0301(make_simulator: MakeSimulator, ak, sk, date, tamper):
    async with make_simulator(aksk={"AK1": "SK1"}) as (sim, base):
        pid = sim.project_ids[0]
        url, headers = signed(base, f"/v1.0/{pid}/streaming/jobs", [("limit", "3")], ak, sk, date)
        reply = await call(
            "GET", url.replace("limit=3", "limit=4") if tamper else url, headers=headers
        )
    assert is_gateway_error(reply, 401, "APIG.0301")
    assert (
        reply.json["error_msg"]
        == "Incorrect IAM authentication information: verify aksk signature fail"
    )


# --- faults -------------------------------------------------------------------------------------


async def test_throttle_answers_429_apig_0308_with_retry_after(make_simulator: MakeSimulator):
    async with make_simulator(throttle_per_s=1.0) as (sim, base):
        busy, calm = sim.project_ids[0], sim.project_ids[1]
        first = await call("GET", jobs_url(base, busy))
        second = await call("GET", jobs_url(base, busy))
        other = await call("GET", jobs_url(base, calm))
    assert (first.status, other.status) == (200, 200)
    assert is_gateway_error(second, 429, "APIG.0308")
    assert second.json["error_msg"] == (
        "The throttling threshold has been reached: "
        "policy user over ratelimit,limit:1,time:1 second"
    )
    assert second.headers["Retry-After"] == "1"
    assert sim.requests[("throttled", busy)] == 1
    assert sim.requests[("throttled", calm)] == 0


async def test_throttle_without_retry_after_header(make_simulator: MakeSimulator):
    async with make_simulator(throttle_per_s=0.5, retry_after=False) as (sim, base):
        replies = [await call("GET", jobs_url(base, sim.project_ids[0])) for _ in range(2)]
    assert [r.status for r in replies] == [200, 429]
    assert "Retry-After" not in replies[1].headers
    assert "limit:30,time:1 minute" in replies[1].json["error_msg"]


async def test_per_project_throttle_set_and_lifted(simulator: tuple[Simulator, str]):
    sim, base = simulator
    pid = sim.project_ids[2]
    sim.set_faults(pid, throttle_per_s=0.01)
    throttled = [(await call("GET", jobs_url(base, pid))).status for _ in range(3)]
    sim.set_faults(pid, throttle_per_s=0)
    lifted = [(await call("GET", jobs_url(base, pid))).status for _ in range(3)]
    others = (await call("GET", jobs_url(base, sim.project_ids[0]))).status
    assert (throttled, lifted, others) == ([200, 429, 429], [200, 200, 200], 200)


async def test_error_rate_answers_a_mix_of_5xx(make_simulator: MakeSimulator):
    async with make_simulator(error_rate=1.0) as (sim, base):
        pid = sim.project_ids[0]
        replies = [await call("GET", jobs_url(base, pid, 1)) for _ in range(40)]
    assert {r.status for r in replies} == {500, 502, 503, 504}
    for reply in replies:
        if reply.status in (502, 504):
            assert is_gateway_error(reply, reply.status, "APIG.0201")
        elif reply.status == 503:
            assert reply.raw.startswith(b"<html>")
        else:
            assert reply.json["error_code"] == "DLI.10001"
    assert sim.requests[("error", pid)] == 40


def _broken(body: bytes) -> str:
    """Which way a 200 body breaks the documented schema (or "" if it does not)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not json"
    payload = doc.get("job_detail", doc.get("job_list"))
    if not isinstance(payload, dict):
        return "payload not an object"
    rows = payload.get("jobs", [payload])
    return "" if all(isinstance(r["job_id"], int) for r in rows) else "job_id not an integer"


async def test_malformed_rate_answers_200_with_broken_bodies(make_simulator: MakeSimulator):
    async with make_simulator(malformed_rate=1.0) as (sim, base):
        pid = sim.project_ids[0]
        job_id = sim.changes()[0].job_id
        replies = [await call("GET", jobs_url(base, pid, job_id)) for _ in range(20)]
        replies += [await call("GET", jobs_url(base, pid)) for _ in range(20)]
    assert {r.status for r in replies} == {200}
    kinds = [_broken(r.raw) for r in replies]
    assert "" not in kinds
    assert set(kinds) == {"not json", "payload not an object", "job_id not an integer"}
    assert sim.requests[("malformed", pid)] == 40


async def test_latency_applies_per_project(simulator: tuple[Simulator, str]):
    sim, base = simulator
    slow, quick = sim.project_ids[0], sim.project_ids[1]
    sim.set_faults(slow, latency_s=30.0)
    with pytest.raises(TimeoutError):
        await call("GET", jobs_url(base, slow), timeout_s=0.3)
    assert (await call("GET", jobs_url(base, quick))).status == 200


async def test_faults_can_be_set_over_http(simulator: tuple[Simulator, str]):
    sim, base = simulator
    sick = sim.project_ids[1]
    ok = await call("POST", f"{base}/_sim/faults", json={"project_id": sick, "error_rate": 1.0})
    bad = await call("POST", f"{base}/_sim/faults", json={"error_rate": 1.0, "colour": "red"})
    assert (ok.status, bad.status) == (200, 400)
    assert (await call("GET", jobs_url(base, sick))).status >= 500
    assert (await call("GET", jobs_url(base, sim.project_ids[0]))).status == 200


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
