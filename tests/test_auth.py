"""Tests for bridge.auth: the AkSkAuth and IamTokenAuth credential providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web
from pydantic import SecretStr

from bridge.auth import (
    REFRESH_RETRY_S,
    AkSkAuth,
    IamTokenAuth,
    NoAuth,
    OutgoingRequest,
    auth_from_settings,
)
from bridge.errors import ApiUnavailable, AuthError, ConfigError, MalformedResponse, RateLimited
from bridge.settings import ApiSettings, AuthSettings
from bridge.signing import verify_signature
from tests.fakes import FakeClock
from tests.http_server import serve_app
from tests.test_signing import AK, SK, VECTOR_NOW, assert_no_secret_logged

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
    async with serve_app(app) as base:
        path = "/v1.0/p1/jobs/" + quote("日 a+b", safe="")
        url = base.with_path(path, encoded=True).with_query(
            [("q", "x y+z/%&="), ("q", "é"), ("empty", "")]
        )
        request = OutgoingRequest("POST", url, {"Content-Type": "application/json"}, b'{"a":1}')
        await AkSkAuth(AK, SecretStr(SK)).apply(request, "p1")
        async with session.post(request.url, headers=request.headers, data=request.body) as resp:
            assert (resp.status, await resp.text()) == (200, AK)


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


@pytest.fixture
async def iam() -> AsyncIterator[FakeIam]:
    fake = FakeIam()
    app = web.Application()
    app.router.add_post("/v3/auth/tokens", fake.handle)
    async with serve_app(app) as fake.url:
        yield fake
        if fake.gate is not None:
            fake.gate.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


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
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 20.0),  # an HTTP date, 20 s after our wall clock
        ("soon", None),
        (None, None),
    ],
)
async def test_iam_reports_retry_after_when_throttled(
    make_iam_auth, iam, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    iam.respond = _iam_error(429, {"error_code": "APIG.0308"}, headers)
    with pytest.raises(RateLimited) as caught:
        await _token(make_iam_auth(wall_clock=lambda: 1_445_412_460.0))
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
    with pytest.raises(ApiUnavailable, match="IAM: no answer within"):
        await _token(make_iam_auth(timeout_s=0.05))


async def test_iam_raises_unavailable_when_connection_refused(session, clock) -> None:
    async with serve_app(web.Application()) as url:
        pass  # served, then closed: nothing listens on `url` any more
    auth = IamTokenAuth(session, url, user=USER, password=SecretStr(PASSWORD), domain=DOMAIN)
    with pytest.raises(ApiUnavailable, match="IAM: request failed"):
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
    caplog.set_level("DEBUG", logger="bridge.signing")
    yield
    assert_no_secret_logged(caplog, PASSWORD, SK, "token-1")


# --- auth_from_settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "kind"),
    [
        ({"mode": "aksk", "ak": "AK1", "sk": "SK1"}, AkSkAuth),
        ({"mode": "token", "user": "u", "password": "p", "domain": "d"}, IamTokenAuth),
        ({"mode": "none"}, NoAuth),
    ],
)
async def test_auth_from_settings_builds_the_mode_asked_for(session, auth, kind):
    built = auth_from_settings(AuthSettings(**auth), ApiSettings(), session)
    assert isinstance(built, kind)
    assert "SK1" not in repr(built)


async def test_token_auth_from_settings_borrows_the_session_and_iam_url(session, iam):
    settings = AuthSettings(mode="token", user=USER, password=PASSWORD, domain=DOMAIN)
    built = auth_from_settings(settings, ApiSettings(iam_endpoint=str(iam.url)), session)
    iam.respond = issue_token
    request = OutgoingRequest("GET", yarl.URL("http://dli.x/"))
    await built.apply(request, "p1")
    assert request.headers["X-Auth-Token"]
    assert len(iam.requests) == 1


async def test_auth_from_settings_refuses_an_unchecked_incomplete_credential(session):
    incomplete = AuthSettings.model_construct(mode="aksk", ak="AK1", sk=None)
    with pytest.raises(ConfigError, match="needs sk"):
        auth_from_settings(incomplete, ApiSettings(), session)


async def test_no_auth_adds_nothing():
    request = OutgoingRequest("GET", yarl.URL("http://dli.x/"))
    auth = NoAuth()
    await auth.apply(request, "p1")
    assert request.headers == {}
    assert (auth.credential_id, auth.invalidate(request), repr(auth)) == (
        "anonymous",
        False,
        "<NoAuth>",
    )
