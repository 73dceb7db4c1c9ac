"""The error tree: what each class says about retrying, and reprs that show context, no secret."""

from __future__ import annotations

import pytest

from bridge.errors import (
    ApiError,
    ApiRejected,
    ApiUnavailable,
    AuthError,
    BridgeError,
    CircuitOpen,
    ConfigError,
    JobNotFound,
    LocalKafkaError,
    MalformedResponse,
    RateLimited,
)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ApiUnavailable("down"), True),
        (RateLimited("slow"), True),
        (CircuitOpen("open"), True),
        (AuthError("no"), False),
        (JobNotFound("gone"), False),
        (ApiRejected("bad"), False),
        (MalformedResponse("broken", body=b""), False),
        (ConfigError("wrong"), False),
    ],
)
def test_retryable_follows_the_branch(error: BridgeError, retryable: bool):
    assert error.retryable is retryable


def test_repr_shows_only_the_context_that_is_set():
    error = RateLimited(
        "throttled", retry_after_s=2.0, status=429, code="APIG.0308", project_id="p1"
    )
    assert repr(error) == "<RateLimited status=429 code='APIG.0308' project_id='p1' 'throttled'>"


def test_repr_without_context_is_class_and_message():
    assert repr(ApiUnavailable("no answer")) == "<ApiUnavailable 'no answer'>"


def test_repr_leaves_out_method_and_url():
    """URLs may carry signed query strings; the repr shows what identifies the call instead."""
    error = ApiError("failed", method="GET", url="https://x/?X-Sdk-Signature=abc", request_id="r")
    assert repr(error) == "<ApiError request_id='r' 'failed'>"
    assert (error.method, error.url) == ("GET", "https://x/?X-Sdk-Signature=abc")


def test_job_not_found_and_malformed_carry_their_data():
    gone = JobNotFound("gone", job_id=7, project_id="p1", code="DLI.16001", status=400)
    broken = MalformedResponse("broken", body=b"<html>", detail="not JSON")
    assert (gone.job_id, gone.status, gone.code) == (7, 400, "DLI.16001")
    assert (broken.body, broken.detail) == (b"<html>", "not JSON")


def test_config_error_lists_every_problem():
    error = ConfigError("invalid", ["a is missing", "b is negative"])
    assert error.problems == ["a is missing", "b is negative"]
    assert str(error) == "invalid\n  - a is missing\n  - b is negative"


def test_local_kafka_error_appends_the_log_tail():
    assert str(LocalKafkaError("failed", "line 1")) == "failed\n--- last output ---\nline 1"
    assert str(LocalKafkaError("failed")) == "failed"
