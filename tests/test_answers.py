"""The meaning of DLI / IAM answers: a table from status and error body to bridge error."""

import orjson
import pytest
import yarl

from bridge.answers import Answer, Call, check_success, error_for, malformed, validate
from bridge.errors import (
    ApiRejected,
    ApiUnavailable,
    AuthError,
    JobNotFound,
    MalformedResponse,
    RateLimited,
)
from bridge.models import JobDetailResponse

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
