"""Tests for bridge.signing: AK/SK vectors, a cross-check against the official signer, the verifier.

Where Huawei's official Python signer (``huaweicloudsdkcore.signer.signer.Signer``) and ours
legitimately differ, a test below pins the difference down:

- Non-JSON Content-Type: the official signer adds ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` and
  leaves the body unsigned; we always sign the body's hash. Given the same declared header, both
  agree, and our verifier accepts the official output either way.
- Host: the official signer uses the endpoint's netloc verbatim (``h:443``); we sign what the
  HTTP client sends (default port dropped).
- Query values: the official signer also takes bools (``true``/``false``) and lists (one ``k=v``
  per item); our API takes the decoded string pairs a URL carries, which is the same thing.
- Header names containing ``_`` are skipped by both.
- Empty body with a declared ``X-Sdk-Content-Sha256``: the Python signer (and ``payload_hash``)
  hash the empty string, Huawei's Go signer uses the declared value; the verifier accepts both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import yarl
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bridge.errors import AuthError
from bridge.signing import (
    EMPTY_BODY_SHA256,
    SIGNING_ALGORITHM,
    canonical_query,
    canonical_request,
    canonical_uri,
    payload_hash,
    sign_headers,
    signature,
    string_to_sign,
    verify_signature,
)

# --- the published example (reference §2.2) ---------------------------------------------------

VECTOR_AK = "QTWAOYTTINDUT2QVKYUC"
VECTOR_SK = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
VECTOR_DATE = "20191115T033655Z"
VECTOR_NOW = datetime(2019, 11, 15, 3, 36, 55, tzinfo=UTC)
VECTOR_URL = yarl.URL(
    "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
    "?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0"
)
VECTOR_HEADERS = {
    "Content-Type": "application/json",
    "Host": "service.region.example.com",
    "X-Sdk-Date": VECTOR_DATE,
}
VECTOR_SIGNATURE = "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"


@pytest.mark.parametrize(
    ("signed", "canonical_sha256", "expected_signature"),
    [
        pytest.param(
            ["content-type", "host", "x-sdk-date"],
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a",
            VECTOR_SIGNATURE,
            id="published",
        ),
        pytest.param(
            ["host", "x-sdk-date"],
            "0e84e7853cf87931d965c80e83bffb15aa865326db3a6f57aa2560a7601dfe18",
            "faafba090046ef84c81ca330e77576d8746733ddfcf0317aaeb59cff50da39a7",
            id="computed-no-content-type",
        ),
    ],
)
def test_vector_matches_when_signing_reference_example(
    signed: list[str], canonical_sha256: str, expected_signature: str
) -> None:
    body_hash = payload_hash(b"", VECTOR_HEADERS)
    canonical = canonical_request(
        "GET", VECTOR_URL.raw_path, VECTOR_URL.query.items(), VECTOR_HEADERS, signed, body_hash
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == canonical_sha256
    assert signature(VECTOR_SK, string_to_sign(VECTOR_DATE, canonical)) == expected_signature


def test_canonical_request_matches_reference_text() -> None:
    canonical = canonical_request(
        "get",
        VECTOR_URL.raw_path,
        VECTOR_URL.query.items(),
        VECTOR_HEADERS,
        ["content-type", "host", "x-sdk-date"],
        EMPTY_BODY_SHA256,
    )
    assert canonical == (
        "GET\n/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\n"
        "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n"
        "content-type:application/json\nhost:service.region.example.com\n"
        "x-sdk-date:20191115T033655Z\n\n"
        "content-type;host;x-sdk-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_sign_headers_produces_exact_authorization_header_format() -> None:
    headers = sign_headers(
        "GET",
        VECTOR_URL,
        {"Content-Type": "application/json"},
        b"",
        ak=VECTOR_AK,
        sk=SecretStr(VECTOR_SK),
        now=VECTOR_NOW,
    )
    assert headers == {
        "Content-Type": "application/json",
        "Host": "service.region.example.com",
        "X-Sdk-Date": VECTOR_DATE,
        "Authorization": (
            f"{SIGNING_ALGORITHM} Access={VECTOR_AK}, "
            f"SignedHeaders=content-type;host;x-sdk-date, Signature={VECTOR_SIGNATURE}"
        ),
    }


def test_sign_headers_replaces_stale_date_and_authorization() -> None:
    stale = {"x-sdk-date": "20000101T000000Z", "authorization": "old", "Content-Type": "a/b"}
    headers = sign_headers(
        "GET", VECTOR_URL, stale, b"", ak="AK", sk=SecretStr("SK"), now=VECTOR_NOW
    )
    assert sorted(headers) == ["Authorization", "Content-Type", "Host", "X-Sdk-Date"]
    assert headers["X-Sdk-Date"] == VECTOR_DATE


# --- the pure pieces, as tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/v1/x", "/v1/x/"),
        ("/v1/x/", "/v1/x/"),
        ("/a b", "/a%20b/"),
        ("/a%20b/", "/a%20b/"),
        ("/a+b", "/a%2Bb/"),
        ("/a%2Fb", "/a/b/"),
        ("/%E6%97%A5", "/%E6%97%A5/"),
        ("/日", "/%E6%97%A5/"),
        ("/~x-y_z.", "/~x-y_z./"),
        ("/a:b@c", "/a%3Ab%40c/"),
        ("//x", "//x/"),
    ],
)
def test_canonical_uri_encodes_segments_when_given_path(path: str, expected: str) -> None:
    assert canonical_uri(path) == expected


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], ""),
        ([("b", "2"), ("a", "1")], "a=1&b=2"),
        ([("a", "z"), ("a", "y"), ("a", "")], "a=&a=y&a=z"),
        ([("k", "")], "k="),
        ([("q", "a b+c/d=e&f%")], "q=a%20b%2Bc%2Fd%3De%26f%25"),
        ([("é", "日")], "%C3%A9=%E6%97%A5"),
        ([("a~", "-_.~")], "a~=-_.~"),
        # sorted on the decoded text, so "~" (0x7e) comes before "é" though "%C3" < "~"
        ([("é", "1"), ("~", "2")], "~=2&%C3%A9=1"),
    ],
)
def test_canonical_query_sorts_and_encodes_when_given_pairs(
    pairs: list[tuple[str, str]], expected: str
) -> None:
    assert canonical_query(pairs) == expected


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"", {}, EMPTY_BODY_SHA256),
        (b"{}", {}, hashlib.sha256(b"{}").hexdigest()),
        (b"{}", {"x-sdk-content-sha256": "UNSIGNED-PAYLOAD"}, "UNSIGNED-PAYLOAD"),
        (b"", {"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"}, EMPTY_BODY_SHA256),
    ],
)
def test_payload_hash_honours_declared_hash_when_body_present(
    body: bytes, headers: dict[str, str], expected: str
) -> None:
    assert payload_hash(body, headers) == expected


# --- cross-check against Huawei's official signer ----------------------------------------------

AK = "AKTESTAKTESTAKTEST01"
SK = "sk-for-tests-only-0123456789abcdefghijkl"

_SPECIAL = st.sampled_from([" ", "+", "%", "/", "=", "&", "?", "#", "~", "é", "日本", "😀", "%2F"])
_TEXT = st.lists(st.one_of(_SPECIAL, st.characters(codec="utf-8")), max_size=6).map("".join)
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16)
_RESERVED = {"host", "x-sdk-date", "authorization", "content-type", "x-sdk-content-sha256"}
_HEADER_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True).filter(
    lambda name: name.lower() not in _RESERVED
)


@dataclass(frozen=True)
class Case:
    """One generated request, described in terms both signers can take."""

    method: str
    netloc: str
    segments: list[str]
    trailing_slash: bool
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    now: datetime

    @property
    def raw_path(self) -> str:
        # The SDK quotes each path parameter with safe="" before substituting it.
        path = "/" + "/".join(quote(segment, safe="") for segment in self.segments)
        return path + "/" if self.trailing_slash and not path.endswith("/") else path

    @property
    def url(self) -> yarl.URL:
        base = yarl.URL.build(
            scheme="https", authority=self.netloc, path=self.raw_path, encoded=True
        )
        return base.with_query(self.query)

    @property
    def date(self) -> str:
        return self.now.strftime("%Y%m%dT%H%M%SZ")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    keys = st.one_of(st.sampled_from(["limit", "offset", "name", "tags", ""]), _TEXT)
    headers = dict(
        draw(
            st.lists(
                st.tuples(_HEADER_NAME, _HEADER_VALUE),
                max_size=4,
                unique_by=lambda kv: kv[0].lower(),
            )
        )
    )
    optional = {
        "Content-Type": draw(
            st.sampled_from([None, "application/json", "application/json;charset=UTF-8"])
        ),
        draw(st.sampled_from(["Host", "host"])): draw(
            st.sampled_from([None, "service.example.com"])
        ),
        "X-Sdk-Content-Sha256": draw(st.sampled_from([None, "UNSIGNED-PAYLOAD", "0" * 64])),
    }
    headers |= {name: value for name, value in optional.items() if value is not None}
    return Case(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "get"])),
        netloc=draw(
            st.sampled_from(
                ["dli.ap-southeast-1.myhuaweicloud.com", "127.0.0.1:8080", "[::1]:9000"]
            )
        ),
        segments=draw(st.lists(_TEXT, max_size=4)),
        trailing_slash=draw(st.booleans()),
        query=draw(st.lists(st.tuples(keys, _TEXT), max_size=5)),
        headers=headers,
        body=draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=64))),
        now=draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1), timezones=st.just(UTC))),
    )


def official_sign(case: Case, query_params: list[tuple[str, Any]] | None = None) -> SdkRequest:
    request = SdkRequest(
        method=case.method,
        schema="https",
        host=case.netloc,
        resource_path=case.raw_path,
        query_params=list(case.query) if query_params is None else query_params,
        header_params={**case.headers, "X-Sdk-Date": case.date},
        body=case.body,
    )
    Signer(BasicCredentials(AK, SK)).sign(request)
    return request


def our_sign(case: Case) -> dict[str, str]:
    return sign_headers(
        case.method, case.url, case.headers, case.body, ak=AK, sk=SecretStr(SK), now=case.now
    )


def verify(case: Case, headers: dict[str, str], *, now: datetime | None = None) -> str:
    url = case.url
    return verify_signature(
        case.method,
        url.raw_path,
        url.query.items(),
        headers,
        case.body,
        secret_for={AK: SK}.get,
        now=now or case.now,
    )


_PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_PROPERTY
@given(case=cases())
def test_signature_matches_official_signer_when_request_generated(case: Case) -> None:
    official = official_sign(case)
    ours = our_sign(case)
    assert ours["Authorization"] == official.header_params["Authorization"]
    assert ours["X-Sdk-Date"] == official.header_params["X-Sdk-Date"]
    # The official SDK sends exactly the canonical query; AkSkAuth rewrites its URL the same way.
    query = canonical_query(case.url.query.items())
    assert official.uri == (f"{case.raw_path}?{query}" if query else case.raw_path)


@_PROPERTY
@given(case=cases())
def test_verify_accepts_both_signers_when_request_generated(case: Case) -> None:
    assert verify(case, our_sign(case)) == AK
    assert verify(case, official_sign(case).header_params) == AK


@_PROPERTY
@given(case=cases())
def test_signature_matches_official_signer_when_query_given_as_lists(case: Case) -> None:
    grouped: dict[str, list[str]] = {}
    for key, value in case.query:
        grouped.setdefault(key, []).append(value)
    as_lists: list[tuple[str, Any]] = [(key, list(values)) for key, values in grouped.items()]
    official = official_sign(case, query_params=as_lists)
    assert our_sign(case)["Authorization"] == official.header_params["Authorization"]


def _example_case(**overrides: Any) -> Case:
    base = Case(
        method="GET",
        netloc="dli.ap-southeast-1.myhuaweicloud.com",
        segments=["v1.0", "p1", "streaming", "jobs"],
        trailing_slash=False,
        query=[],
        headers={},
        body=b"",
        now=VECTOR_NOW,
    )
    return replace(base, **overrides)


def test_signature_matches_official_signer_when_query_value_is_bool() -> None:
    case = _example_case(query=[("show_detail", "true"), ("limit", "100")])
    official = official_sign(case, query_params=[("show_detail", True), ("limit", 100)])
    assert our_sign(case)["Authorization"] == official.header_params["Authorization"]


def test_signature_differs_from_official_signer_when_content_type_not_json() -> None:
    case = _example_case(method="POST", headers={"Content-Type": "text/plain"}, body=b"hello")
    official = official_sign(case)
    assert official.header_params["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert our_sign(case)["Authorization"] != official.header_params["Authorization"]
    declared = replace(case, headers={**case.headers, "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"})
    assert our_sign(declared)["Authorization"] == official.header_params["Authorization"]
    assert verify(case, official.header_params) == AK


def test_host_differs_from_official_signer_when_endpoint_names_default_port() -> None:
    case = _example_case(netloc="dli.ap-southeast-1.myhuaweicloud.com:443")
    assert official_sign(case).header_params["Host"] == "dli.ap-southeast-1.myhuaweicloud.com:443"
    assert our_sign(case)["Host"] == "dli.ap-southeast-1.myhuaweicloud.com"


# --- verify_signature rejects --------------------------------------------------------------------


def _signed_case() -> tuple[Case, dict[str, str]]:
    case = _example_case(
        method="POST",
        query=[("limit", "10"), ("name", "a b")],
        headers={"Content-Type": "application/json", "X-Project-Id": "p1"},
        body=b'{"job_ids":[1]}',
    )
    return case, our_sign(case)


def _resign_without_host(case: Case, headers: dict[str, str]) -> dict[str, str]:
    signed = ["content-type", "x-sdk-date"]
    canonical = canonical_request(
        case.method, case.raw_path, case.query, headers, signed, payload_hash(case.body, headers)
    )
    sig = signature(SK, string_to_sign(case.date, canonical))
    auth = f"{SIGNING_ALGORITHM} Access={AK}, SignedHeaders={';'.join(signed)}, Signature={sig}"
    return {**headers, "Authorization": auth}


_TAMPER: dict[str, Callable[[Case, dict[str, str]], tuple[Case, dict[str, str]]]] = {
    "query-value": lambda c, h: (replace(c, query=[("limit", "11"), ("name", "a b")]), h),
    "query-extra": lambda c, h: (replace(c, query=[*c.query, ("offset", "0")]), h),
    "path": lambda c, h: (replace(c, segments=[*c.segments, "x"]), h),
    "method": lambda c, h: (replace(c, method="PUT"), h),
    "body": lambda c, h: (replace(c, body=b'{"job_ids":[2]}'), h),
    "signed-header": lambda c, h: (c, {**h, "X-Project-Id": "p2"}),
    "date-header": lambda c, h: (c, {**h, "X-Sdk-Date": "20191115T033656Z"}),
    "missing-authorization": lambda c, h: (c, {k: v for k, v in h.items() if k != "Authorization"}),
    "date-malformed": lambda c, h: (c, {**h, "X-Sdk-Date": "2019-11-15T03:36:55Z"}),
    "malformed-authorization": lambda c, h: (c, {**h, "Authorization": "Bearer abc"}),
    "unknown-ak": lambda c, h: (c, {**h, "Authorization": h["Authorization"].replace(AK, "NOPE")}),
    "missing-signed-header": lambda c, h: (c, {k: v for k, v in h.items() if k != "X-Project-Id"}),
    "host-unsigned": lambda c, h: (c, _resign_without_host(c, h)),
}


@pytest.mark.parametrize("tamper", sorted(_TAMPER))
def test_verify_rejects_request_when_tampered(tamper: str) -> None:
    case, headers = _signed_case()
    assert verify(case, headers) == AK
    bad_case, bad_headers = _TAMPER[tamper](case, headers)
    with pytest.raises(AuthError) as caught:
        verify(bad_case, bad_headers)
    assert (caught.value.status, caught.value.code) == (401, "APIG.0301")
    assert SK not in str(caught.value)
    assert SK not in repr(caught.value)


@pytest.mark.parametrize(
    ("skew_s", "accepted"),
    [(0, True), (900, True), (-900, True), (960, False), (-960, False), (86400, False)],
)
def test_verify_checks_date_skew_when_server_clock_differs(skew_s: int, accepted: bool) -> None:
    case, headers = _signed_case()
    now = case.now + timedelta(seconds=skew_s)
    if accepted:
        assert verify(case, headers, now=now) == AK
    else:
        with pytest.raises(AuthError, match="X-Sdk-Date"):
            verify(case, headers, now=now)


def test_verify_rejects_signature_when_secret_differs() -> None:
    case, headers = _signed_case()
    with pytest.raises(AuthError, match="signature"):
        verify_signature(
            case.method,
            case.url.raw_path,
            case.url.query.items(),
            headers,
            case.body,
            secret_for=lambda _ak: "another-secret",
            now=case.now,
        )


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No record the test logged mentions any of ``secrets``."""
    for record in caplog.records:
        text = record.getMessage()
        for secret in secrets:
            assert secret not in text


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("DEBUG", logger="bridge.signing")
    yield
    assert_no_secret_logged(caplog, SK)


def test_verify_accepts_declared_hash_when_body_empty_go_style() -> None:
    """Huawei's Go signer signs a declared X-Sdk-Content-Sha256 even for an empty body."""
    case = _example_case(headers={"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD", "Host": "h"})
    headers = {**case.headers, "X-Sdk-Date": case.date}
    signed = ["host", "x-sdk-content-sha256", "x-sdk-date"]
    canonical = canonical_request("GET", case.raw_path, [], headers, signed, "UNSIGNED-PAYLOAD")
    sig = signature(SK, string_to_sign(case.date, canonical))
    auth = f"{SIGNING_ALGORITHM} Access={AK}, SignedHeaders={';'.join(signed)}, Signature={sig}"
    assert verify(case, {**headers, "Authorization": auth}) == AK
