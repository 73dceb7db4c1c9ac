"""The simulated gateway over real HTTP: unknown routes, request ids, tokens, AK/SK, faults."""

from __future__ import annotations

import re

import orjson
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from yarl import URL

from bridge.simulator import Simulator
from tests.fakes import FakeClock
from tests.sim_calls import call, is_gateway_error, jobs_url, token_for
from tests.sim_fixtures import MakeSimulator


def signed(
    base: str, path: str, query: list[tuple[str, str]], ak: str, sk: str, date: str | None = None
) -> tuple[str, dict[str, str]]:
    """Sign with Huawei's own SDK signer (independent of bridge.signing)."""
    url = URL(base)
    headers = {"X-Sdk-Date": date} if date else {}
    host = f"{url.host}:{url.port}"
    request = SdkRequest("GET", "http", host, path, query_params=query, header_params=headers)
    Signer(BasicCredentials(ak, sk)).sign(request)
    return base + request.uri, dict(request.header_params)


# --- routes and request ids -------------------------------------------------------------------


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


# --- token checks ----------------------------------------------------------------------------


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
