"""The meaning of DLI / IAM answers: a table from status and error body to bridge error."""

import asyncio

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web

from bridge.answers import (
    Answer,
    Call,
    check_success,
    error_for,
    exchange,
    iam_error_for,
    malformed,
    validate,
)
from bridge.deadlines import Deadlines
from bridge.errors import (
    ApiErrorContext,
    ApiRejected,
    ApiUnavailable,
    AuthError,
    JobNotFound,
    MalformedResponse,
    RateLimited,
)
from bridge.models import JobDetailResponse
from tests.http_server import serve_app

DETAIL = Call("GET", yarl.URL("https://dli.x/v1.0/p1/streaming/jobs/7"), "p1", 7)
LIST = Call("GET", yarl.URL("https://dli.x/v1.0/p1/streaming/jobs"), "p1")


def answer(status: int, body: object = b"", request_id: str | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Answer(status, raw, None, request_id)


def dli(code: str, msg: str = "m") -> dict[str, str]:
    return {"error_code": code, "error_msg": msg}


@pytest.mark.parametrize(
    ("call", "status", "body", "expected"),
    [
        (DETAIL, 400, dli("DLI.16001"), JobNotFound),
        (DETAIL, 404, dli("DLI.0023"), JobNotFound),
        (DETAIL, 404, dli("APIG.0101"), ApiRejected),  # a wrong endpoint is not "deleted"
        (DETAIL, 404, dli("APIGW.0101"), ApiRejected),
        (LIST, 404, dli("DLI.0023"), ApiRejected),  # only a job call can say "no such job"
        (LIST, 400, dli("DLI.0001"), ApiRejected),
        (LIST, 429, dli("APIG.0308"), RateLimited),
        (LIST, 400, dli("APIGW.0308"), RateLimited),
        (LIST, 401, dli("APIG.0301"), AuthError),
        (LIST, 403, dli("APIG.0302"), AuthError),
        (LIST, 500, dli("DLI.10001"), ApiUnavailable),
        (LIST, 502, dli("APIG.0201"), ApiUnavailable),
        (LIST, 503, b"<html>Service Unavailable</html>", ApiUnavailable),
        (LIST, 504, b"", ApiUnavailable),
    ],
)
def test_error_for_maps_status_and_code(call, status, body, expected):
    error = error_for(answer(status, body), call, None)
    assert type(error) is expected
    assert error.status == status
    assert error.project_id == "p1"


def test_error_for_keeps_code_message_and_request_id():
    body = {"error_code": "APIG.0308", "error_msg": "slow down", "request_id": "r-body"}
    error = error_for(answer(429, body), LIST, 2.5)
    assert isinstance(error, RateLimited)
    assert (error.code, error.request_id, error.retry_after_s) == ("APIG.0308", "r-body", 2.5)
    assert "slow down" in str(error)


def test_error_for_prefers_the_header_request_id():
    error = error_for(answer(500, dli("DLI.10001"), request_id="r-header"), LIST, None)
    assert error.request_id == "r-header"


def test_error_for_truncates_a_huge_non_json_body():
    error = error_for(answer(502, b"x" * 10_000), LIST, None)
    assert len(str(error)) < 500


def test_not_found_carries_the_job_id():
    error = error_for(answer(400, dli("DLI.16001")), DETAIL, None)
    assert isinstance(error, JobNotFound)
    assert error.job_id == 7


def test_validate_failure_is_malformed_with_raw_body_and_field_path():
    raw = b'{"job_detail": {"job_id": "abc"}}'
    with pytest.raises(MalformedResponse) as caught:
        validate(JobDetailResponse, orjson.loads(raw), answer(200, raw), DETAIL)
    assert caught.value.body == raw
    assert "job_detail.job_id" in caught.value.detail


def test_check_success_refuses_is_success_false():
    with pytest.raises(ApiRejected, match="quota exceeded"):
        check_success(False, "quota exceeded", answer(200), LIST)
    check_success(True, "", answer(200), LIST)
    check_success(None, None, answer(200), LIST)


def test_malformed_keeps_status_and_body():
    error = malformed("not JSON", answer(200, b"<html>"), LIST)
    assert (error.status, error.body, error.detail) == (200, b"<html>", "not JSON")


# --- IAM answers ------------------------------------------------------------------------------

IAM_CONTEXT: ApiErrorContext = {"method": "POST", "url": "https://iam.x/v3/auth/tokens"}


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (401, {"error": {"code": 401, "message": "wrong pw-1"}}, AuthError, "401"),
        (400, {"error_code": "IAM.0001", "error_msg": "bad"}, AuthError, "IAM.0001"),
        (429, {"error_code": "APIG.0308"}, RateLimited, "APIG.0308"),
        (503, b"<html>down</html>", ApiUnavailable, None),
        (500, b"[]", ApiUnavailable, None),
    ],
)
def test_iam_error_for_maps_status_and_scrubs_the_password(status, body, error, code):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    result = iam_error_for(
        status, raw, credential_id="u@d", password="pw-1", retry_after_s=3.0, context=IAM_CONTEXT
    )
    assert type(result) is error
    assert (result.status, result.code, result.method) == (status, code, "POST")
    assert "pw-1" not in str(result)
    assert "u@d" in str(result)
    if isinstance(result, RateLimited):
        assert result.retry_after_s == 3.0


# --- the exchange ------------------------------------------------------------------------------


def _nowhere() -> ApiErrorContext:
    return {}


async def test_exchange_returns_status_headers_and_body():
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=418, body=await request.read(), headers={"X-Request-Id": "r"})

    app = web.Application()
    app.router.add_post("/echo", handler)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        status, headers, body = await exchange(
            session,
            "POST",
            url / "echo",
            headers={},
            body=b"hi",
            deadlines=Deadlines(5.0),
            context=_nowhere,
        )
    assert (status, headers["X-Request-Id"], body) == (418, "r", b"hi")


async def test_exchange_maps_a_refused_connection_and_a_timeout():
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        with pytest.raises(ApiUnavailable, match=r"^IAM: no answer within 0\.05 s") as late:
            await exchange(
                session, "GET", url / "slow", headers={}, body=b"", deadlines=Deadlines(0.05),
                context=lambda: {"project_id": "p1"}, label="IAM",
            )  # fmt: skip
        with pytest.raises(ApiUnavailable, match=r"^request failed: ClientConnector") as refused:
            await exchange(
                session, "GET", yarl.URL("http://127.0.0.1:9/"), headers={}, body=b"",
                deadlines=Deadlines(5.0), context=_nowhere,
            )  # fmt: skip
    assert late.value.project_id == "p1"
    assert isinstance(late.value.__cause__, TimeoutError)
    assert isinstance(refused.value.__cause__, aiohttp.ClientError)
