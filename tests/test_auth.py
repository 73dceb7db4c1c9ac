"""Tests for bridge.auth: AK/SK signing (vectors, official-signer cross-check) and IAM tokens.

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

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bridge.auth import (
    EMPTY_BODY_SHA256,
    REFRESH_RETRY_S,
    SIGNING_ALGORITHM,
    AkSkAuth,
    IamTokenAuth,
    OutgoingRequest,
    canonical_query,
    canonical_request,
    canonical_uri,
    payload_hash,
    sign_headers,
    signature,
    string_to_sign,
    verify_signature,
)
from bridge.errors import ApiUnavailable, AuthError, MalformedResponse, RateLimited

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


# --- AkSkAuth ------------------------------------------------------------------------------------


def _aksk(**overrides: Any) -> AkSkAuth:
    options: dict[str, Any] = {"clock": lambda: VECTOR_NOW} | overrides
    return AkSkAuth(AK, SecretStr(SK), **options)


async def test_aksk_apply_signs_project_and_security_token_when_given() -> None:
    auth = _aksk(security_token=SecretStr("temporary-token-secret"))
    url = yarl.URL("https://dli.example.com/v1.0/p1/streaming/jobs").with_query(
        [("name", "a b+c"), ("limit", "100")]
    )
    request = OutgoingRequest("GET", url, {"Content-Type": "application/json"})
    await auth.apply(request, "p1")
    assert request.url.raw_query_string == "limit=100&name=a%20b%2Bc"
    assert request.headers["X-Project-Id"] == "p1"
    assert request.headers["X-Security-Token"] == "temporary-token-secret"
    signed = "SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token,"
    assert signed in request.headers["Authorization"]
    assert (
        verify_signature(
            "GET",
            request.url.raw_path,
            request.url.query.items(),
            request.headers,
            b"",
            secret_for={AK: SK}.get,
            now=VECTOR_NOW,
        )
        == AK
    )


async def test_aksk_apply_omits_project_header_when_account_level() -> None:
    request = OutgoingRequest("GET", yarl.URL("https://iam.example.com/v3/auth/projects"))
    await _aksk().apply(request, None)
    assert "X-Project-Id" not in request.headers
    assert "X-Security-Token" not in request.headers


def test_aksk_invalidate_returns_false_when_signature_refused() -> None:
    auth = _aksk()
    assert auth.invalidate(OutgoingRequest("GET", yarl.URL("https://h/"))) is False
    assert auth.credential_id == AK


async def test_aksk_repr_hides_secrets_when_temporary_credentials() -> None:
    auth = _aksk(security_token=SecretStr("temporary-token-secret"))
    request = OutgoingRequest("GET", yarl.URL("https://h/x"))
    await auth.apply(request, "p1")
    for text in (repr(auth), str(auth), repr(request)):
        assert SK not in text
        assert "temporary-token-secret" not in text
        assert "Signature" not in text
    assert AK in repr(auth)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _serve(app: web.Application) -> tuple[web.AppRunner, yarl.URL]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, yarl.URL.build(scheme="http", host=host, port=port)


async def test_aksk_signature_survives_aiohttp_wire_when_query_and_path_odd(
    session: aiohttp.ClientSession,
) -> None:
    """aiohttp client → aiohttp server: Host, raw path and query decoding agree with the signer."""

    async def gateway(request: web.Request) -> web.Response:
        ak = verify_signature(
            request.method,
            request.rel_url.raw_path,
            request.query.items(),
            request.headers,
            await request.read(),
            secret_for={AK: SK}.get,
            now=datetime.now(UTC),
        )
        return web.Response(text=ak)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gateway)
    runner, base = await _serve(app)
    try:
        path = "/v1.0/p1/jobs/" + quote("日 a+b", safe="")
        url = base.with_path(path, encoded=True).with_query(
            [("q", "x y+z/%&="), ("q", "é"), ("empty", "")]
        )
        request = OutgoingRequest("POST", url, {"Content-Type": "application/json"}, b'{"a":1}')
        await AkSkAuth(AK, SecretStr(SK)).apply(request, "p1")
        async with session.post(request.url, headers=request.headers, data=request.body) as resp:
            assert (resp.status, await resp.text()) == (200, AK)
    finally:
        await runner.cleanup()


# --- IamTokenAuth --------------------------------------------------------------------------------

USER, DOMAIN, PASSWORD = "bridge-user", "acme", "pa55-w0rd-never-shown"
ISSUED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def token_body(lifetime_s: float) -> bytes:
    expires = ISSUED + timedelta(seconds=lifetime_s)
    token = {
        "issued_at": ISSUED.isoformat(),
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
    }
    return orjson.dumps({"token": {**token, "methods": ["password"]}})


def issue_token(number: int, lifetime_s: float = 3600.0) -> web.Response:
    headers = {"X-Subject-Token": f"token-{number}"}
    return web.Response(
        status=201, body=token_body(lifetime_s), headers=headers, content_type="application/json"
    )


def _iam_error(status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return lambda _n: web.Response(status=status, body=raw, headers=headers)


@dataclass
class FakeIam:
    """The IAM token endpoint: records request bodies, answers with ``respond(n)``."""

    respond: Callable[[int], web.Response] = issue_token
    requests: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    url: yarl.URL = field(default_factory=yarl.URL)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.received.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.respond(len(self.requests))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def iam() -> AsyncIterator[FakeIam]:
    fake = FakeIam()
    app = web.Application()
    app.router.add_post("/v3/auth/tokens", fake.handle)
    runner, fake.url = await _serve(app)
    yield fake
    if fake.gate is not None:
        fake.gate.set()
    await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_iam_auth(
    session: aiohttp.ClientSession, iam: FakeIam, clock: FakeClock
) -> Callable[..., IamTokenAuth]:
    def make(**overrides: Any) -> IamTokenAuth:
        options: dict[str, Any] = {
            "user": USER,
            "password": SecretStr(PASSWORD),
            "domain": DOMAIN,
            "clock": clock,
        } | overrides
        return IamTokenAuth(session, iam.url, **options)

    return make


async def _token(auth: IamTokenAuth, project_id: str | None = "p1") -> str:
    request = OutgoingRequest("GET", yarl.URL("https://dli.example.com/"))
    await auth.apply(request, project_id)
    return request.headers["X-Auth-Token"]


async def test_iam_sends_password_auth_scoped_to_project(make_iam_auth, iam) -> None:
    await _token(make_iam_auth(), "p1")
    await _token(make_iam_auth(), None)
    user = {"name": USER, "password": PASSWORD, "domain": {"name": DOMAIN}}
    identity = {"methods": ["password"], "password": {"user": user}}
    assert iam.requests == [
        {"auth": {"identity": identity, "scope": {"project": {"id": "p1"}}}},
        {"auth": {"identity": identity, "scope": {"domain": {"name": DOMAIN}}}},
    ]


async def test_iam_caches_token_per_scope_when_called_again(make_iam_auth, iam) -> None:
    auth = make_iam_auth()
    assert [await _token(auth, "p1") for _ in range(3)] == ["token-1"] * 3
    assert await _token(auth, "p2") == "token-2"
    assert await _token(auth, None) == "token-3"
    assert await _token(auth, "p1") == "token-1"
    assert len(iam.requests) == 3
    assert auth.credential_id == f"{USER}@{DOMAIN}"


@pytest.mark.parametrize(
    ("lifetime_s", "margin_s", "last_cached_s"),
    [(3600.0, 600.0, 2999.0), (60.0, 600.0, 29.0), (3600.0, 0.0, 3599.0)],
)
async def test_iam_refreshes_token_before_expiry_when_margin_reached(
    make_iam_auth, iam, clock, lifetime_s: float, margin_s: float, last_cached_s: float
) -> None:
    iam.respond = lambda n: issue_token(n, lifetime_s)
    auth = make_iam_auth(refresh_margin_s=margin_s)
    start = clock.now
    assert await _token(auth) == "token-1"
    clock.now = start + last_cached_s
    assert await _token(auth) == "token-1"
    clock.now = start + last_cached_s + 2
    assert await _token(auth) == "token-2"
    assert len(iam.requests) == 2


async def test_iam_keeps_valid_token_when_refresh_fails_transiently(
    make_iam_auth, iam, clock
) -> None:
    healthy = iam.respond
    auth = make_iam_auth()
    start = clock.now
    assert await _token(auth) == "token-1"
    iam.respond = _iam_error(503, {"error_code": "APIG.0613"})
    clock.now = start + 3001  # inside the refresh margin: refresh fails, token still valid
    assert await _token(auth) == "token-1"
    clock.now = start + 3001 + REFRESH_RETRY_S - 1  # back-off: IAM not asked again
    assert await _token(auth) == "token-1"
    assert len(iam.requests) == 2
    clock.now = start + 3001 + REFRESH_RETRY_S + 1
    iam.respond = healthy
    assert await _token(auth) == "token-3"
    assert len(iam.requests) == 3


async def test_iam_raises_when_refresh_fails_after_expiry(make_iam_auth, iam, clock) -> None:
    auth = make_iam_auth()
    start = clock.now
    await _token(auth)
    iam.respond = _iam_error(503, {"error_code": "APIG.0613"})
    clock.now = start + 3600
    with pytest.raises(ApiUnavailable):
        await _token(auth)


async def test_iam_raises_when_refresh_refused_before_expiry(make_iam_auth, iam, clock) -> None:
    """A refused password is not papered over by the old token."""
    auth = make_iam_auth()
    start = clock.now
    await _token(auth)
    iam.respond = _iam_error(401, {"error_msg": "password changed"})
    clock.now = start + 3001
    with pytest.raises(AuthError):
        await _token(auth)


async def test_iam_shares_one_refresh_when_many_callers_concurrent(make_iam_auth, iam) -> None:
    auth = make_iam_auth()
    iam.gate = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_token(auth)) for _ in range(50)]
        await iam.received.wait()
        await asyncio.sleep(0)
        assert not any(task.done() for task in tasks)
        iam.gate.set()
    assert {task.result() for task in tasks} == {"token-1"}
    assert len(iam.requests) == 1


async def test_iam_shares_one_failure_when_many_callers_concurrent(make_iam_auth, iam) -> None:
    """A refused password is tried once, not once per waiting caller (IAM locks users)."""
    auth = make_iam_auth()
    iam.gate = asyncio.Event()
    iam.respond = lambda _n: web.json_response({"error": {"code": 401}}, status=401)
    gate = iam.gate

    async def release() -> None:
        await iam.received.wait()
        await asyncio.sleep(0)
        gate.set()

    callers = [_token(auth) for _ in range(50)]
    _, *results = await asyncio.gather(release(), *callers, return_exceptions=True)
    assert len(results) == 50
    assert all(isinstance(result, AuthError) for result in results)
    assert len(iam.requests) == 1


async def test_iam_fetches_new_token_once_when_invalidated_after_401(make_iam_auth, iam) -> None:
    auth = make_iam_auth()
    first = OutgoingRequest("GET", yarl.URL("https://dli.example.com/a"))
    second = OutgoingRequest("GET", yarl.URL("https://dli.example.com/b"))
    await auth.apply(first, "p1")
    await auth.apply(second, "p1")
    assert auth.invalidate(first) is True
    assert auth.invalidate(second) is True  # the same stale token: nothing more to drop
    assert await _token(auth) == "token-2"
    assert auth.invalidate(first) is True  # a late 401 on the old token keeps the new one
    assert await _token(auth) == "token-2"
    assert len(iam.requests) == 2


@pytest.mark.parametrize(
    ("respond", "error", "code"),
    [
        (
            _iam_error(401, {"error": {"code": 401, "message": f"bad password {PASSWORD}"}}),
            AuthError,
            "401",
        ),
        (
            _iam_error(403, {"error_code": "IAM.0002", "error_msg": "forbidden"}),
            AuthError,
            "IAM.0002",
        ),
        (_iam_error(400, {"error_msg": "scope"}), AuthError, None),
        (_iam_error(401, b"<html>denied</html>"), AuthError, None),
        (_iam_error(500, {"error_msg": "boom"}), ApiUnavailable, None),
        (_iam_error(502, b"[]"), ApiUnavailable, None),
        (_iam_error(503, {"error_code": "APIG.0613"}), ApiUnavailable, "APIG.0613"),
        (_iam_error(429, {"error_code": "APIG.0308"}), RateLimited, "APIG.0308"),
    ],
)
async def test_iam_maps_error_status_when_token_refused(
    make_iam_auth, iam, respond, error: type[Exception], code: str | None
) -> None:
    iam.respond = respond
    with pytest.raises(error) as caught:
        await _token(make_iam_auth())
    assert type(caught.value) is error
    assert getattr(caught.value, "code", None) == code
    for text in (str(caught.value), repr(caught.value), repr(caught.value.args)):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", None), (None, None)],
)
async def test_iam_reports_retry_after_when_throttled(
    make_iam_auth, iam, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    iam.respond = _iam_error(429, {"error_code": "APIG.0308"}, headers)
    with pytest.raises(RateLimited) as caught:
        await _token(make_iam_auth())
    assert caught.value.retry_after_s == expected


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, token_body(3600)),
        ({"X-Subject-Token": "t"}, b"not json"),
        ({"X-Subject-Token": "t"}, b'{"token": {"issued_at": "2024-05-01T12:00:00Z"}}'),
        ({"X-Subject-Token": "t"}, b'{"token": {"expires_at": "tomorrow"}}'),
        ({"X-Subject-Token": "t"}, b"[]"),
        (
            {"X-Subject-Token": "t"},
            orjson.dumps(
                {
                    "token": {
                        "issued_at": "2024-05-01T12:00:00Z",
                        "expires_at": "2024-05-01T11:00:00Z",
                    }
                }
            ),
        ),
    ],
)
async def test_iam_raises_malformed_when_token_response_unusable(
    make_iam_auth, iam, headers: dict[str, str], body: bytes
) -> None:
    iam.respond = lambda _n: web.Response(status=201, body=body, headers=headers)
    with pytest.raises(MalformedResponse) as caught:
        await _token(make_iam_auth())
    assert caught.value.body == body
    assert PASSWORD not in str(caught.value)


async def test_iam_raises_unavailable_when_request_times_out(make_iam_auth, iam) -> None:
    iam.gate = asyncio.Event()
    with pytest.raises(ApiUnavailable, match="did not answer"):
        await _token(make_iam_auth(timeout_s=0.05))


async def test_iam_raises_unavailable_when_connection_refused(session, clock) -> None:
    runner, url = await _serve(web.Application())
    await runner.cleanup()
    auth = IamTokenAuth(session, url, user=USER, password=SecretStr(PASSWORD), domain=DOMAIN)
    with pytest.raises(ApiUnavailable, match="IAM request failed"):
        await _token(auth)


async def test_iam_repr_hides_password_and_token_when_cached(make_iam_auth) -> None:
    auth = make_iam_auth()
    token = await _token(auth)
    for text in (repr(auth), str(auth)):
        assert PASSWORD not in text
        assert token not in text
    assert f"{USER}@{DOMAIN}" in repr(auth)


async def test_iam_accepts_string_url_with_path_prefix(session) -> None:
    auth = IamTokenAuth(
        session,
        "https://iam.example.com/gw/",
        user=USER,
        password=SecretStr(PASSWORD),
        domain=DOMAIN,
    )
    assert "https://iam.example.com/gw/v3/auth/tokens?nocatalog=true" in repr(auth)


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("DEBUG", logger="bridge.auth")
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert PASSWORD not in text
        assert SK not in text
        assert "token-1" not in text


def test_verify_accepts_declared_hash_when_body_empty_go_style() -> None:
    """Huawei's Go signer signs a declared X-Sdk-Content-Sha256 even for an empty body."""
    case = _example_case(headers={"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD", "Host": "h"})
    headers = {**case.headers, "X-Sdk-Date": case.date}
    signed = ["host", "x-sdk-content-sha256", "x-sdk-date"]
    canonical = canonical_request("GET", case.raw_path, [], headers, signed, "UNSIGNED-PAYLOAD")
    sig = signature(SK, string_to_sign(case.date, canonical))
    auth = f"{SIGNING_ALGORITHM} Access={AK}, SignedHeaders={';'.join(signed)}, Signature={sig}"
    assert verify(case, {**headers, "Authorization": auth}) == AK
