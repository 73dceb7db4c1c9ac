"""The simulated IAM over real HTTP: password tokens for each scope, refusals, project lists."""

from __future__ import annotations

import pytest

from tests.fakes import FakeClock
from tests.sim_calls import call, is_gateway_error, password_body
from tests.sim_fixtures import MakeSimulator


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
