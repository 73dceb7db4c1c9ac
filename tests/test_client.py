"""DliClient: paging, error mapping, retries, limits and breakers, mostly against the simulator."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bridge import client as client_module
from bridge.answers import Answer, Call, validate
from bridge.auth import AkSkAuth, Auth, IamTokenAuth, NoAuth, OutgoingRequest
from bridge.breaker import BreakerState
from bridge.client import DliClient, new_session, parse_job_body
from bridge.errors import (
    ApiError,
    ApiRejected,
    ApiUnavailable,
    AuthError,
    CircuitOpen,
    JobNotFound,
    MalformedResponse,
    RateLimited,
)
from bridge.models import JobRowsResponse
from bridge.retry import Sleep
from bridge.settings import ApiSettings
from bridge.simulator import Simulator, SimulatorConfig
from tests.client_fixtures import api_settings
from tests.fakes import FakeClock, RecordingSleep
from tests.http_server import serve_app

# --- a scripted server: answers the simulator cannot give -----------------------------------


@dataclass
class Scripted:
    """Answers requests from a script, one entry per request; the last entry repeats."""

    script: list[tuple[int, bytes, dict[str, str]]]
    seen: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        status, body, headers = self.script[0] if len(self.script) == 1 else self.script.pop(0)
        return web.Response(status=status, body=body, headers=headers)


def _json(doc: object, status: int = 200, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    return status, orjson.dumps(doc), {"Content-Type": "application/json", **headers}


@asynccontextmanager
async def _serve(scripted: Scripted) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    async with serve_app(app) as url:
        yield str(url)


_api = api_settings


@asynccontextmanager
async def _client(settings: ApiSettings, auth: Auth, **options: Any) -> AsyncIterator[DliClient]:
    """A client on its own session, for tests that build everything by hand."""
    async with new_session() as session, DliClient(settings, auth, session, **options) as client:
        yield client


@asynccontextmanager
async def _scripted_client(
    *script: tuple[int, bytes, dict[str, str]], auth: Auth | None = None, **overrides: Any
) -> AsyncIterator[tuple[DliClient, Scripted, RecordingSleep]]:
    scripted = Scripted(list(script))
    sleep = RecordingSleep()
    async with (
        _serve(scripted) as base_url,
        _client(
            _api(base_url, **overrides), auth or NoAuth(), sleep=sleep, rng=random.Random(1)
        ) as client,
    ):
        yield client, scripted, sleep


DETAIL_OK = _json({"is_success": "true", "message": "", "job_detail": {"job_id": 5, "name": "x"}})


async def test_detail_calls_keep_the_endpoint_path_and_ask_for_json():
    scripted = Scripted([DETAIL_OK])
    async with _serve(scripted) as base_url, _client(_api(base_url + "/gw/a%20b"), NoAuth()) as c:
        await c.get_job_body("p1", 5)
        await c.get_job("p1", "5")
    paths = [r.raw_path for r in scripted.seen]
    assert paths == ["/gw/a%20b/v1.0/p1/streaming/jobs/5"] * 2
    assert {r.headers["Accept"] for r in scripted.seen} == {"application/json"}


async def test_detail_answer_gives_raw_and_model():
    async with _scripted_client(DETAIL_OK) as (client, scripted, _):
        fetched = await client.get_job("p1", 5)
    assert fetched.raw == {"job_id": 5, "name": "x"}
    assert (fetched.model.job_id, fetched.model.name) == (5, "x")
    assert scripted.seen[0].path == "/v1.0/p1/streaming/jobs/5"


async def test_detail_body_is_the_raw_answer_and_parses_like_get_job():
    async with _scripted_client(DETAIL_OK) as (client, scripted, _):
        body = await client.get_job_body("p1", 5)
        fetched = await client.get_job("p1", 5)
    assert body == DETAIL_OK[1]
    assert parse_job_body(body, project_id="p1", job_id=5) == fetched
    assert [r.path for r in scripted.seen] == ["/v1.0/p1/streaming/jobs/5"] * 2


async def test_detail_body_of_a_missing_job_is_job_not_found():
    gone = _json({"error_code": "DLI.16001", "error_msg": "The job 5 does not exist."}, 400)
    async with _scripted_client(gone) as (client, _, sleep):
        with pytest.raises(JobNotFound) as caught:
            await client.get_job_body("p1", 5)
    assert (caught.value.job_id, caught.value.project_id) == (5, "p1")
    assert sleep.delays == []


@pytest.mark.parametrize(
    ("body", "error", "what"),
    [
        (b"<html>", MalformedResponse, "not JSON"),
        (b"[1]", MalformedResponse, "not a JSON object"),
        (b'{"is_success": "true"}', MalformedResponse, "no job_detail"),
        (b'{"job_detail": {"job_id": "x"}}', MalformedResponse, "schema"),
        (b'{"is_success": "false", "message": "locked"}', ApiRejected, "locked"),
    ],
)
def test_parse_job_body_fails_like_get_job(body, error, what):
    with pytest.raises(error, match=what) as caught:
        parse_job_body(body, project_id="p1", job_id=5)
    assert caught.value.project_id == "p1"
    assert "/v1.0/p1/streaming/jobs/5" in str(caught.value)
    if isinstance(caught.value, MalformedResponse):
        assert caught.value.body == body


async def test_make_client_borrows_the_tests_session(make_client, http_session, simulator):
    sim, base_url = simulator
    async with make_client(base_url) as client:
        assert client.session is http_session
        rows = await client.list_jobs(sim.project_ids[0])
    assert len(rows) == 10
    assert not http_session.closed


async def test_is_success_false_is_rejected_with_message():
    answer = _json({"is_success": "false", "message": "job is locked"})
    async with _scripted_client(answer) as (client, scripted, _):
        with pytest.raises(ApiRejected, match="job is locked"):
            await client.get_job("p1", 5)
    assert len(scripted.seen) == 1


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (_json({"error_code": "DLI.16001", "error_msg": "no job"}, 400), JobNotFound, "DLI.16001"),
        (_json({"error_code": "DLI.0023", "error_msg": "none"}, 404), JobNotFound, "DLI.0023"),
        (
            _json({"error_code": "APIG.0101", "error_msg": "no api", "request_id": "r1"}, 404),
            ApiRejected,
            "APIG.0101",
        ),
        (
            _json({"error_code": "APIGW.0101", "error_msg": "no api"}, 404),
            ApiRejected,
            "APIGW.0101",
        ),
        (_json({"error_code": "DLI.0001", "error_msg": "bad param"}, 400), ApiRejected, "DLI.0001"),
        (_json({"error_code": "APIG.0301", "error_msg": "aksk fail"}, 401), AuthError, "APIG.0301"),
        (_json({"error_code": "APIG.0302", "error_msg": "no perm"}, 403), AuthError, "APIG.0302"),
    ],
)
async def test_error_answer_maps_to_one_error_without_retry(answer, error, code):
    async with _scripted_client(answer) as (client, scripted, sleep):
        with pytest.raises(error) as caught:
            await client.get_job("p1", 5)
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.project_id == "p1"
    assert len(scripted.seen) == 1
    assert sleep.delays == []


async def test_gateway_404_on_list_is_rejected_not_empty():
    answer = _json({"error_code": "APIG.0101", "error_msg": "no api"}, 404)
    async with _scripted_client(answer) as (client, _, _):
        with pytest.raises(ApiRejected, match="endpoint"):
            await client.list_jobs("p1")


async def test_request_id_comes_from_header_or_body():
    header = _json({"error_code": "DLI.0001", "error_msg": "x"}, 400, **{"X-Request-Id": "hdr"})
    body = _json({"error_code": "APIG.0201", "error_msg": "x", "request_id": "bdy"}, 400)
    async with _scripted_client(header, body) as (client, _, _):
        with pytest.raises(ApiRejected) as first:
            await client.get_job("p1", 5)
        with pytest.raises(ApiRejected) as second:
            await client.get_job("p1", 5)
    assert (first.value.request_id, second.value.request_id) == ("hdr", "bdy")


async def test_5xx_burst_is_retried_with_full_jitter_then_succeeds():
    down = (503, b"<html>busy</html>", {"Content-Type": "text/html"})
    async with _scripted_client(down, down, DETAIL_OK, retry_attempts=4) as (
        client,
        scripted,
        sleep,
    ):
        fetched = await client.get_job("p1", 5)
    assert fetched.model.job_id == 5
    assert len(scripted.seen) == 3
    rng = random.Random(1)
    expected = [rng.uniform(0, 0.5), rng.uniform(0, 1.0)]
    assert sleep.delays == expected


async def test_retry_after_http_date_is_honoured():
    now = 1_700_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    throttled = _json(
        {"error_code": "APIGW.0308", "error_msg": "over ratelimit"}, 429, **{"Retry-After": when}
    )
    scripted = Scripted([throttled, DETAIL_OK])
    sleep = RecordingSleep()
    async with (
        _serve(scripted) as base_url,
        _client(_api(base_url), NoAuth(), sleep=sleep, wall_clock=lambda: now) as client,
    ):
        await client.get_job("p1", 5)
    assert sleep.delays == [7.0]


async def test_retry_after_is_capped():
    throttled = _json(
        {"error_code": "APIG.0308", "error_msg": "slow"}, 429, **{"Retry-After": "3600"}
    )
    async with _scripted_client(throttled, DETAIL_OK, retry_after_cap_s=20.0) as (client, _, sleep):
        await client.get_job("p1", 5)
    assert sleep.delays == [20.0]


async def test_throttling_without_retry_after_backs_off_then_gives_up():
    throttled = _json({"error_code": "APIG.0308", "error_msg": "slow"}, 429)
    async with _scripted_client(throttled) as (client, scripted, sleep):
        with pytest.raises(RateLimited) as caught:
            await client.get_job("p1", 5)
    assert caught.value.retry_after_s is None
    assert len(scripted.seen) == 3
    assert len(sleep.delays) == 2
    assert all(0 <= d <= 1.0 for d in sleep.delays)


class OnceMoreAuth(NoAuth):
    """Says a fresh credential may help after a 401, like the IAM token auth."""

    def __init__(self) -> None:
        self.invalidated = 0

    def invalidate(self, request: OutgoingRequest) -> bool:
        self.invalidated += 1
        return True


async def test_401_retries_once_after_invalidate():
    refused = _json({"error_code": "APIG.0307", "error_msg": "token must be updated"}, 401)
    auth = OnceMoreAuth()
    async with _scripted_client(refused, DETAIL_OK, auth=auth) as (client, scripted, sleep):
        await client.get_job("p1", 5)
    assert (auth.invalidated, len(scripted.seen), sleep.delays) == (1, 2, [])


async def test_401_twice_is_an_auth_error():
    refused = _json({"error_code": "APIG.0301", "error_msg": "token expires"}, 401)
    auth = OnceMoreAuth()
    async with _scripted_client(refused, auth=auth) as (client, scripted, _):
        with pytest.raises(AuthError):
            await client.get_job("p1", 5)
    assert (auth.invalidated, len(scripted.seen)) == (1, 2)


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ((200, b"<html>oops</html>", {}), "not JSON"),
        ((200, b"[1, 2]", {"Content-Type": "application/json"}), "not a JSON object"),
        (_json({"is_success": "true", "job_detail": {"job_id": "abc"}}), "job_detail.job_id"),
        (_json({"is_success": "true"}), "no job_detail"),
        (_json({"is_success": "perhaps", "job_detail": {}}), "is_success"),
    ],
)
async def test_unusable_2xx_body_is_malformed_with_raw_body(answer, detail):
    async with _scripted_client(answer) as (client, scripted, _):
        with pytest.raises(MalformedResponse) as caught:
            await client.get_job("p1", 5)
    assert caught.value.body == answer[1]
    assert detail in caught.value.detail or detail in str(caught.value)
    assert len(scripted.seen) == 1


async def test_list_without_job_list_is_malformed():
    async with _scripted_client(_json({"is_success": True})) as (client, _, _):
        with pytest.raises(MalformedResponse, match="job_list"):
            await client.list_jobs("p1")


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=3),
    st.just("7"),
    st.just(1.0),
    st.sampled_from(["true", "false", " True"]),
)
_list_rows = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"job_id": st.one_of(st.integers(0, 9), _scalars)},
            optional={f: _scalars for f in ("name", "status", "job_type", "queue_name", "x")},
        ),
        _scalars,
    ),
    max_size=4,
)
_list_bodies = st.fixed_dictionaries(
    {},
    optional={
        "is_success": _scalars,
        "message": _scalars,
        "job_list": st.one_of(
            _scalars, st.fixed_dictionaries({}, optional={"jobs": st.one_of(_list_rows, _scalars)})
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(doc=_list_bodies)
def test_lean_rows_agree_with_the_validated_rows_or_defer_to_them(doc):
    """The engine's hand-checked list rows are exactly what pydantic's JobRow would give, and
    anything the hand check cannot vouch for goes to pydantic (which names the problem)."""
    call = Call("GET", yarl.URL("/v1.0/p1/streaming/jobs"), "p1")
    answer = Answer(200, orjson.dumps(doc), None, None)
    lean = client_module._lean_rows(doc)
    try:
        body = validate(JobRowsResponse, doc, answer, call)
        modelled = [(r.model.job_id, r.raw) for r in client_module._rows(doc, body, answer, call)]
    except ApiError:
        assert lean is None
        return
    if lean is not None:
        assert lean == modelled
        assert all(type(job_id) is int for job_id, _ in lean)


def test_lean_rows_take_a_page_as_dli_serves_it():
    row = {"job_id": 1, "name": "a", "status": "job_running", "queue_name": None, "duration": 5}
    doc = {"is_success": "true", "message": "", "job_list": {"total_count": 1, "jobs": [row]}}
    assert client_module._lean_rows(doc) == [(1, row)]  # no pydantic on the common page
    assert client_module._lean_rows(doc | {"is_success": True}) == [(1, row)]


async def test_engine_rows_coerce_through_pydantic_when_the_hand_check_cannot():
    doc = {"job_list": {"jobs": [{"job_id": "7", "status": "job_running"}, {"job_id": 8}]}}
    async with _scripted_client(_json(doc)) as (client, _, _):
        pages = [page async for page in client.iter_rows("p1")]
    assert pages == [[(7, {"job_id": "7", "status": "job_running"}), (8, {"job_id": 8})]]


async def test_engine_rows_refuse_a_row_without_a_job_id():
    doc = {"job_list": {"jobs": [{"job_id": 1}, {"name": "no id"}]}}
    async with _scripted_client(_json(doc)) as (client, _, _):
        with pytest.raises(MalformedResponse) as caught:
            [page async for page in client.iter_rows("p1")]
    assert "job_list.jobs.1.job_id" in caught.value.detail


@pytest.mark.parametrize(
    ("job_list", "counted"),
    [
        ({"total_count": 26, "jobs": [{"job_id": 1}]}, 26),  # every match: the doc's example
        ({"total_count": 1, "jobs": [{"job_id": 1}]}, None),  # may be the page's size
        ({"total_count": 0, "jobs": []}, None),
        ({"jobs": [{"job_id": 1}]}, None),
        ({"total_count": "26", "jobs": [{"job_id": 1}]}, None),
        ({"total_count": True, "jobs": []}, None),
    ],
)
async def test_count_is_every_match_only_when_it_exceeds_the_page(job_list, counted):
    doc = {"is_success": "true", "job_list": job_list}
    async with _scripted_client(_json(doc)) as (client, scripted, _):
        assert await client.count_jobs("p1") == counted
    query = scripted.seen[0].rel_url.query
    assert (query["limit"], query["offset"], query["show_detail"]) == ("1", "0", "false")


async def test_a_count_no_larger_than_its_page_counts_once_another_answer_proved_it():
    proof = {"is_success": "true", "job_list": {"total_count": 26, "jobs": [{"job_id": 1}]}}
    one = {"is_success": "true", "job_list": {"total_count": 1, "jobs": [{"job_id": 1}]}}
    async with _scripted_client(_json(one), _json(proof), _json(one)) as (client, _, _):
        assert await client.count_jobs("p1") is None  # might count the page
        assert await client.count_jobs("p2") == 26
        assert await client.count_jobs("p1") == 1  # the API counts every match


async def test_count_refuses_a_body_the_list_refuses():
    async with _scripted_client(_json({"is_success": True})) as (client, _, _):
        with pytest.raises(MalformedResponse, match="job_list"):
            await client.count_jobs("p1")


async def test_list_sends_paging_and_filters():
    rows = {"is_success": "true", "job_list": {"total_count": 1, "jobs": [{"job_id": 1}]}}
    async with _scripted_client(_json(rows)) as (client, scripted, _):
        fetched = await client.list_jobs("p1", show_detail=True, status="job_running", page_size=50)
    assert [r.raw for r in fetched] == [{"job_id": 1}]
    assert dict(scripted.seen[0].query) == {
        "status": "job_running",
        "order": "asc",
        "show_detail": "true",
        "offset": "0",
        "limit": "50",
    }


async def test_list_projects_reads_iam_answer():
    doc = {"projects": [{"id": "p1", "name": "sim-1", "enabled": True, "links": {}}], "links": {}}
    async with _scripted_client(_json(doc)) as (client, scripted, _):
        projects = await client.list_projects()
    assert [(p.model.id, p.raw["links"]) for p in projects] == [("p1", {})]
    assert scripted.seen[0].path == "/v3/auth/projects"


async def test_connection_refused_is_unavailable_after_retries():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleep = RecordingSleep()
    settings_ = _api(f"http://127.0.0.1:{port}")
    async with _client(settings_, NoAuth(), sleep=sleep) as client:
        with pytest.raises(ApiUnavailable) as caught:
            await client.get_job("p1", 5)
    assert caught.value.status is None
    assert len(sleep.delays) == 2
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_client_is_opened_once_and_leaves_the_borrowed_session_open():
    async with new_session() as session:
        client = DliClient(_api("http://127.0.0.1:9"), NoAuth(), session)
        assert "unopened" in repr(client)
        async with client:
            assert client.session is session
            assert "open" in repr(client)
            with pytest.raises(RuntimeError):
                await client.__aenter__()
        assert not session.closed
        with pytest.raises(RuntimeError):
            _ = client.session


async def test_client_refuses_a_closed_session():
    session = new_session()
    await session.close()
    with pytest.raises(RuntimeError, match="open aiohttp session"):
        async with DliClient(_api("http://127.0.0.1:9"), NoAuth(), session):
            pass


# --- against the simulator over real HTTP ---------------------------------------------------


@asynccontextmanager
async def _simulated(**config: Any) -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(**config))
    async with sim.serve() as base_url:
        yield sim, base_url


@asynccontextmanager
async def _sim_client(
    sim_config: dict[str, Any] | None = None, *, sleep: Sleep | None = None, **overrides: Any
) -> AsyncIterator[tuple[DliClient, Simulator]]:
    async with (
        _simulated(**(sim_config or {})) as (sim, base_url),
        _client(
            _api(base_url, **overrides), NoAuth(), sleep=sleep or RecordingSleep(),
            rng=random.Random(3),
        ) as client,
    ):  # fmt: skip
        yield client, sim


def _live_ids(sim: Simulator, project_id: str) -> set[int]:
    """Ground truth: jobs the simulator created in the project and has not deleted."""
    live: set[int] = set()
    for change in sim.changes():
        if change.project_id == project_id and change.kind == "created":
            live.add(change.job_id)
        elif change.project_id == project_id and change.kind == "deleted":
            live.discard(change.job_id)
    return live


async def test_detail_from_simulator_is_the_job_as_served():
    async with _sim_client() as (client, sim):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        fetched = await client.get_job(pid, job_id)
    assert fetched.raw == sim.job(pid, job_id)
    assert fetched.model.job_id == job_id


async def test_list_pages_through_every_job_once():
    async with _sim_client({"jobs_per_project": 25}) as (client, sim):
        pid = sim.project_ids[1]
        rows = await client.list_jobs(pid, page_size=10)
    ids = [r.model.job_id for r in rows]
    assert sorted(ids) == sorted(_live_ids(sim, pid))
    assert sim.requests[("list", pid)] == 3  # offsets 0, 9, 18


async def test_list_with_detail_carries_config():
    async with _sim_client({"jobs_per_project": 3}) as (client, sim):
        rows = await client.list_jobs(sim.project_ids[0], show_detail=True)
    assert all(r.model.job_config is not None for r in rows)


async def test_list_survives_deletions_between_pages():
    async with _sim_client({"jobs_per_project": 30}) as (client, sim):
        pid = sim.project_ids[0]
        taken: list[int] = []
        deleted: list[int] = []
        async for page in client.iter_pages(pid, page_size=10):
            if not taken:
                # Rows before the page boundary vanish: the next page's rows shift left.
                deleted = [page[2].model.job_id, page[3].model.job_id]
                for job_id in deleted:
                    sim.delete_job(pid, job_id)
            taken += [r.model.job_id for r in page]
    assert len(taken) == len(set(taken))
    assert _live_ids(sim, pid) <= set(taken)
    # Offsets 0, 9 (no row seen before: contact lost), 0 again, 9, 18: its rows reach the
    # total_count of 28 (the first page's count of 30 above its 10 rows proved it counts all).
    assert sim.requests[("list", pid)] == 5


@pytest.mark.parametrize(("total_count", "requests"), [("all", 2), ("page", 3)])
async def test_a_full_last_page_ends_the_scan_once_the_count_is_proven(total_count, requests):
    """19 jobs, pages of 10 overlapping by one: offsets 0 and 9 hold them all. Where the first
    answer's count (19 above its 10 rows) proves it counts every match, the scan ends there;
    where it counts the page, only a short page at offset 18 can tell the list has ended."""
    async with _sim_client({"jobs_per_project": 19, "total_count": total_count}) as (client, sim):
        pid = sim.project_ids[0]
        rows = await client.list_jobs(pid, page_size=10)
        engine_rows = [row async for page in client.iter_rows(pid) for row in page]
    assert sorted(r.model.job_id for r in rows) == sorted(_live_ids(sim, pid))
    assert sorted(job_id for job_id, _ in engine_rows) == sorted(_live_ids(sim, pid))
    # the engine's pages hold 100 rows: one request, whether or not the count is proven
    assert sim.requests[("list", pid)] == requests + 1


async def test_list_picks_up_jobs_created_mid_scan():
    async with _sim_client({"jobs_per_project": 15}) as (client, sim):
        pid = sim.project_ids[0]
        taken: list[int] = []
        created = None
        async for page in client.iter_pages(pid, page_size=10):
            if created is None:
                created = sim.create_job(pid, name="born-mid-scan")
            taken += [r.model.job_id for r in page]
    assert created in taken
    assert set(taken) == _live_ids(sim, pid)


async def test_missing_job_is_not_found():
    async with _sim_client() as (client, sim):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        sim.delete_job(pid, job_id)
        with pytest.raises(JobNotFound) as caught:
            await client.get_job(pid, job_id)
    assert (caught.value.code, caught.value.status, caught.value.job_id) == (
        "DLI.16001",
        400,
        job_id,
    )
    assert caught.value.request_id is None or isinstance(caught.value.request_id, str)


async def test_wrong_endpoint_is_rejected_not_not_found():
    async with _simulated() as (sim, base_url):
        pid = sim.project_ids[0]
        async with _client(_api(base_url + "/wrong-prefix"), NoAuth()) as client:
            with pytest.raises(ApiRejected) as detail:
                await client.get_job(pid, 1)
            with pytest.raises(ApiRejected) as listing:
                await client.list_jobs(pid)
    assert detail.value.code == listing.value.code == "APIG.0101"
    assert not isinstance(detail.value, JobNotFound)
    assert detail.value.request_id  # the gateway's id travels with the error


async def test_5xx_burst_is_retried_then_succeeds():
    sim_box: list[Simulator] = []

    async def heal_after_two(seconds: float) -> None:
        healer.delays.append(seconds)
        if len(healer.delays) == 2:
            sim_box[0].set_faults(error_rate=0.0)

    healer = RecordingSleep()
    async with _sim_client({"error_rate": 1.0}, sleep=heal_after_two, retry_attempts=5) as (
        client,
        sim,
    ):
        sim_box.append(sim)
        pid = sim.project_ids[0]
        fetched = await client.get_job(pid, min(_live_ids(sim, pid)))
    assert fetched.model.job_id is not None
    assert sim.requests[("error", pid)] == 2
    assert sim.requests[("detail", pid)] == 3


async def test_5xx_exhausted_is_unavailable():
    async with _sim_client({"error_rate": 1.0}, retry_attempts=3) as (client, sim):
        pid = sim.project_ids[0]
        with pytest.raises(ApiUnavailable) as caught:
            await client.list_jobs(pid)
    assert caught.value.status in (500, 502, 503, 504)
    assert sim.requests[("list", pid)] == 3


async def test_429_storm_honours_retry_after():
    throttled_sleep = RecordingSleep()
    async with _sim_client({"throttle_per_s": 0.5}, sleep=throttled_sleep, retry_attempts=4) as (
        client,
        sim,
    ):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        await client.get_job(pid, job_id)  # the project's only token
        with pytest.raises(RateLimited) as caught:
            await client.get_job(pid, job_id)
    # The simulator asks for ~2 s (one token at 0.5/s); we slept what it said, not our backoff.
    assert throttled_sleep.delays == [2.0, 2.0, 2.0]
    assert caught.value.code == "APIG.0308"
    assert caught.value.retry_after_s == 2.0
    assert sim.requests[("throttled", pid)] == 4


async def test_429_without_retry_after_uses_backoff():
    sleep = RecordingSleep()
    config = {"throttle_per_s": 0.5, "retry_after": False}
    async with _sim_client(config, sleep=sleep, retry_attempts=3) as (client, sim):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        await client.get_job(pid, job_id)
        with pytest.raises(RateLimited):
            await client.get_job(pid, job_id)
    rng = random.Random(3)
    assert sleep.delays == [rng.uniform(0, 0.5), rng.uniform(0, 1.0)]


async def test_latency_past_timeout_is_unavailable_after_retries():
    config = {"latency_s": 0.25}
    async with _sim_client(config, request_timeout_s=0.05, retry_attempts=2) as (client, sim):
        pid = sim.project_ids[0]
        with pytest.raises(ApiUnavailable, match="no answer within") as caught:
            await client.get_job(pid, 1)
        # The client gave up on the second request after 50 ms; on a busy machine the server
        # may only now be reading it.
        for _ in range(200):
            if sim.requests[("detail", pid)] == 2:
                break
            await asyncio.sleep(0.01)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert sim.requests[("detail", pid)] == 2


async def test_malformed_bodies_carry_the_raw_body():
    async with _sim_client({"malformed_rate": 1.0, "jobs_per_project": 3}) as (client, sim):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        errors = []
        for _ in range(6):
            with pytest.raises(MalformedResponse) as detail:
                await client.get_job(pid, job_id)
            with pytest.raises(MalformedResponse) as listing:
                await client.list_jobs(pid)
            errors += [detail.value, listing.value]
    assert sim.requests[("malformed", pid)] == 12
    assert all(e.body and e.detail for e in errors)
    assert sim.requests[("detail", pid)] == 6  # a malformed body is not retried


async def test_schema_breaking_field_is_malformed_with_raw_body():
    async with _sim_client() as (client, sim):
        pid = sim.project_ids[0]
        job_id = min(_live_ids(sim, pid))
        sim.update_job(pid, job_id, restart_times="many")
        with pytest.raises(MalformedResponse) as caught:
            await client.get_job(pid, job_id)
    assert b'"restart_times":"many"' in caught.value.body
    assert "job_detail.restart_times" in caught.value.detail


async def test_iam_token_expiry_mid_run_reauthenticates_once():
    async with (
        _simulated(users={"ops": "pw-123"}) as (sim, base_url),
        new_session() as session,
    ):
        auth = IamTokenAuth(
            session, base_url, user="ops", password=SecretStr("pw-123"), domain="sim-domain"
        )
        async with DliClient(_api(base_url), auth, session) as client:
            pid = sim.project_ids[0]
            job_id = min(_live_ids(sim, pid))
            await client.get_job(pid, job_id)
            sim.expire_tokens()
            fetched = await client.get_job(pid, job_id)
            projects = await client.list_projects()
    assert fetched.model.job_id == job_id
    assert sim.requests[("unauthorized", pid)] == 1
    assert sim.requests[("token", "")] == 3  # project scope, its refresh, then domain scope
    assert [p.model.id for p in projects] == sim.project_ids


async def test_refused_iam_password_is_final():
    async with (
        _simulated(users={"ops": "pw-123"}) as (sim, base_url),
        new_session() as session,
    ):
        auth = IamTokenAuth(
            session, base_url, user="ops", password=SecretStr("wrong"), domain="sim-domain"
        )
        async with DliClient(_api(base_url), auth, session) as client:
            pid = sim.project_ids[0]
            with pytest.raises(AuthError) as caught:
                await client.get_job(pid, 1)
    assert "wrong" not in str(caught.value)
    assert sim.requests[("token", "")] == 1
    assert sim.requests[("detail", pid)] == 0


async def test_aksk_signed_calls_are_accepted():
    async with (
        _simulated(aksk={"AK-TEST": "SK-TEST"}, jobs_per_project=12) as (sim, base_url),
        _client(_api(base_url), AkSkAuth("AK-TEST", SecretStr("SK-TEST"))) as client,
    ):
        pid = sim.project_ids[0]
        rows = await client.list_jobs(pid, page_size=5, job_type="flink_sql_job", name="")
        projects = await client.list_projects()
        detail = await client.get_job(pid, min(_live_ids(sim, pid)))
        shown = repr(client)
    assert "AK-TEST" in shown
    assert "SK-TEST" not in shown
    assert all(r.model.job_type == "flink_sql_job" for r in rows)
    assert [p.model.id for p in projects] == sim.project_ids
    assert detail.model.job_id is not None
    assert sim.requests[("unauthorized", pid)] == 0


@pytest.mark.parametrize("auth", [AkSkAuth("AK-TEST", SecretStr("wrong")), NoAuth()])
async def test_refused_credential_is_an_auth_error_without_retry(auth):
    async with (
        _simulated(aksk={"AK-TEST": "SK-TEST"}) as (sim, base_url),
        _client(_api(base_url), auth, sleep=RecordingSleep()) as client,
    ):
        pid = sim.project_ids[0]
        with pytest.raises(AuthError) as caught:
            await client.get_job(pid, 1)
    assert (caught.value.status, caught.value.code) == (401, "APIG.0301")
    assert sim.requests[("detail", pid)] == 1


async def test_breaker_opens_on_a_sick_project_and_recovers():
    clock = FakeClock()
    async with (
        _simulated() as (sim, base_url),
        _client(
            _api(base_url, retry_attempts=1, breaker_threshold=2, breaker_cooldown_s=30.0),
            NoAuth(), clock=clock, sleep=RecordingSleep(),
        ) as client,
    ):  # fmt: skip
        sick, healthy = sim.project_ids[0], sim.project_ids[1]
        sim.set_faults(sick, error_rate=1.0)
        for _ in range(2):
            with pytest.raises(ApiUnavailable):
                await client.get_job(sick, 1)
        with pytest.raises(CircuitOpen) as caught:
            await client.get_job(sick, 1)
        assert caught.value.retry_after_s == 30.0
        assert sim.requests[("detail", sick)] == 2  # refused without a request
        await client.list_jobs(healthy)  # another project is not affected
        assert client.breaker_states() == {sick: BreakerState.OPEN, healthy: BreakerState.CLOSED}
        clock.now += 30.0
        sim.set_faults(sick, error_rate=0.0)
        await client.list_jobs(sick)  # the half-open probe succeeds
        assert client.breaker_states()[sick] is BreakerState.CLOSED
        assert "breakers_not_closed=0" in repr(client)


async def test_throttled_project_does_not_delay_a_healthy_one():
    """A waits out a Retry-After while B's calls all finish, through a 2-slot in-flight cap."""
    waiting = asyncio.Event()
    release = asyncio.Event()
    delays: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        delays.append(seconds)
        waiting.set()
        await release.wait()

    async with (
        _simulated(projects=2, jobs_per_project=20) as (sim, base_url),
        _client(
            _api(base_url, max_in_flight=2, retry_attempts=3), NoAuth(), sleep=gated_sleep
        ) as client,
    ):
        a, b = sim.project_ids
        a_job = min(_live_ids(sim, a))
        sim.set_faults(a, throttle_per_s=0.01)
        await client.get_job(a, a_job)  # A's only token
        async with asyncio.TaskGroup() as tg:
            slow = tg.create_task(client.get_job(a, a_job))
            await waiting.wait()
            fast = await asyncio.gather(*(client.get_job(b, j) for j in _live_ids(sim, b)))
            # Every B call is done, and A has not retried: it is still waiting out Retry-After.
            assert len(fast) == 20
            assert sim.requests[("detail", a)] == 2
            assert sim.requests[("throttled", a)] == 1
            sim.set_faults(a, throttle_per_s=0)
            release.set()
    assert slow.result().model.job_id == a_job
    assert delays == [60.0]  # the simulator's Retry-After, capped at its 60 s
    assert sim.requests[("detail", a)] == 3
