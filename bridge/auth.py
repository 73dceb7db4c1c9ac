"""Huawei Cloud credentials behind the Auth protocol: AK/SK request signing and IAM tokens."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
import yarl
from pydantic import SecretStr

from bridge.answers import exchange, iam_error_for
from bridge.deadlines import Deadlines
from bridge.errors import (
    ApiErrorContext,
    BridgeError,
    ConfigError,
    MalformedResponse,
)
from bridge.retry import parse_retry_after
from bridge.settings import ApiSettings, AuthSettings
from bridge.signing import as_utc, canonical_query, sign_headers

__all__ = [
    "AkSkAuth",
    "Auth",
    "IamTokenAuth",
    "NoAuth",
    "OutgoingRequest",
    "auth_from_settings",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

HEADER_AUTH_TOKEN = "X-Auth-Token"
HEADER_SUBJECT_TOKEN = "X-Subject-Token"
HEADER_PROJECT_ID = "X-Project-Id"
HEADER_SECURITY_TOKEN = "X-Security-Token"
DEFAULT_REFRESH_MARGIN_S = 600.0
DEFAULT_IAM_TIMEOUT_S = 10.0
# While a refresh keeps failing but the current token is still valid, ask IAM at most this often.
REFRESH_RETRY_S = 30.0


@dataclass(repr=False)
class OutgoingRequest:
    """What the client is about to send; ``Auth.apply`` adds credentials to ``headers``."""

    method: str
    url: yarl.URL
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        # Headers carry tokens and signatures, so they never appear here.
        return f"<OutgoingRequest {self.method} {self.url}>"


class Auth(Protocol):
    """Adds credentials to a request; one implementation per way Huawei Cloud authenticates."""

    async def apply(self, request: OutgoingRequest, project_id: str | None) -> None:
        """Add credentials to ``request.headers``; ``project_id`` None = an account-level call."""
        ...

    def invalidate(self, request: OutgoingRequest) -> bool:
        """Called once after a 401 on ``request``; True if fresh credentials may help."""
        ...

    @property
    def credential_id(self) -> str:
        """Non-secret id of the credential, for rate limiting and logs."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _with_canonical_query(url: yarl.URL) -> yarl.URL:
    # Like the official SDK, send the query exactly as signed (%20 not "+", sorted), so a gateway
    # that canonicalises the raw query string cannot read it differently from what we signed.
    query = canonical_query(url.query.items())
    return yarl.URL.build(
        scheme=url.scheme,
        authority=url.raw_authority,
        path=url.raw_path,
        query_string=query,
        fragment=url.raw_fragment,
        encoded=True,
    )


class AkSkAuth:
    """AK/SK request signing; optional security token for temporary credentials.

    ``apply`` adds X-Project-Id (when given) and X-Security-Token before signing, so both are
    signed, and rewrites ``request.url`` to carry the query in its canonical encoding.
    """

    def __init__(
        self,
        ak: str,
        sk: SecretStr,
        *,
        security_token: SecretStr | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._ak = ak
        self._sk = sk
        self._security_token = security_token
        self._clock = clock

    @property
    def credential_id(self) -> str:
        return self._ak

    async def apply(self, request: OutgoingRequest, project_id: str | None) -> None:
        if project_id is not None:
            request.headers[HEADER_PROJECT_ID] = project_id
        if self._security_token is not None:
            request.headers[HEADER_SECURITY_TOKEN] = self._security_token.get_secret_value()
        request.url = _with_canonical_query(request.url)
        signed = sign_headers(
            request.method,
            request.url,
            request.headers,
            request.body,
            ak=self._ak,
            sk=self._sk,
            now=self._clock(),
        )
        request.headers.clear()
        request.headers.update(signed)

    def invalidate(self, request: OutgoingRequest) -> bool:
        # A signature is computed fresh for every request; a 401 means the key itself is wrong.
        return False

    def __repr__(self) -> str:
        temporary = " temporary" if self._security_token is not None else ""
        return f"<AkSkAuth ak={self._ak!r}{temporary}>"


@dataclass(frozen=True)
class _Token:
    value: SecretStr
    refresh_at: float
    expires_at: float


@dataclass
class _Scope:
    """One cached token and the lock that makes concurrent callers share one refresh."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: _Token | None = None
    finished: int = 0
    error: BridgeError | None = None


def _token_request(user: str, password: str, domain: str, project_id: str | None) -> bytes:
    scope: dict[str, Any] = (
        {"project": {"id": project_id}} if project_id is not None else {"domain": {"name": domain}}
    )
    identity = {
        "methods": ["password"],
        "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
    }
    return orjson.dumps({"auth": {"identity": identity, "scope": scope}})


def _expiry_seconds(raw: bytes) -> float:
    """Seconds the token lives, from ``token.expires_at`` minus ``token.issued_at``.

    Using IAM's own pair (rather than our wall clock) keeps the lifetime right when the local
    clock is off; without ``issued_at`` the local UTC time stands in.
    """
    doc = orjson.loads(raw)
    token = doc["token"]
    expires = datetime.fromisoformat(token["expires_at"])
    issued_text = token.get("issued_at")
    issued = datetime.fromisoformat(issued_text) if issued_text else _utc_now()
    lifetime = (as_utc(expires) - as_utc(issued)).total_seconds()
    if lifetime <= 0:
        raise ValueError("token expires before it was issued")
    return lifetime


class IamTokenAuth:
    """IAM password tokens, one per scope (a project, or the domain for account-level calls).

    Tokens are cached and refreshed ``refresh_margin_s`` before expiry (at most half their
    lifetime early); concurrent callers of one scope share a single IAM request, and when that
    request fails they all get its error instead of asking IAM again. If a refresh fails with a
    retryable error while the token still works, the token keeps being used and IAM is asked
    again after ``REFRESH_RETRY_S``. The aiohttp session is borrowed, not owned.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        iam_url: str | yarl.URL,
        *,
        user: str,
        password: SecretStr,
        domain: str,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        timeout_s: float = DEFAULT_IAM_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        base = yarl.URL(iam_url)
        # nocatalog drops the service catalog, the bulk of the 201 body, which we never read.
        self._tokens_url = base.with_path(f"{base.path.rstrip('/')}/v3/auth/tokens").with_query(
            nocatalog="true"
        )
        self._session = session
        self._user = user
        self._password = password
        self._domain = domain
        self._refresh_margin_s = refresh_margin_s
        self._deadlines = Deadlines(timeout_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._scopes: dict[str | None, _Scope] = {}

    @property
    def credential_id(self) -> str:
        return f"{self._user}@{self._domain}"

    async def apply(self, request: OutgoingRequest, project_id: str | None) -> None:
        token = await self._token(project_id)
        request.headers[HEADER_AUTH_TOKEN] = token.value.get_secret_value()

    def invalidate(self, request: OutgoingRequest) -> bool:
        sent = request.headers.get(HEADER_AUTH_TOKEN)
        for scope in self._scopes.values():
            # Only the token that failed is dropped: if another caller already replaced it,
            # the fresh one stays and no second refresh starts.
            if scope.token is not None and scope.token.value.get_secret_value() == sent:
                scope.token = None
                log.info("IAM token for %s dropped after a 401", self.credential_id)
        return True

    def __repr__(self) -> str:
        return f"<IamTokenAuth {self.credential_id} url={str(self._tokens_url)!r}>"

    def _cached(self, scope: _Scope) -> _Token | None:
        token = scope.token
        return token if token is not None and self._clock() < token.refresh_at else None

    async def _token(self, project_id: str | None) -> _Token:
        scope = self._scopes.get(project_id)
        if scope is None:
            scope = self._scopes[project_id] = _Scope()
        if cached := self._cached(scope):
            return cached
        seen = scope.finished
        async with scope.lock:
            if cached := self._cached(scope):
                return cached
            if scope.finished != seen and scope.error is not None:
                # We queued behind a refresh that failed: share its error, do not ask again.
                raise scope.error
            try:
                scope.token, scope.error = await self._refresh(scope.token, project_id), None
            except BridgeError as exc:
                scope.error = exc
                raise
            finally:
                scope.finished += 1
            return scope.token

    async def _refresh(self, current: _Token | None, project_id: str | None) -> _Token:
        try:
            return await self._fetch(project_id)
        except BridgeError as exc:
            now = self._clock()
            if not exc.retryable or current is None or now >= current.expires_at:
                raise
            # IAM is down or throttling, but the token we hold still works: keep using it.
            log.warning(
                "IAM token refresh for %s failed (%s); current token valid for %.0f s more",
                self.credential_id,
                type(exc).__name__,
                current.expires_at - now,
            )
            return replace(current, refresh_at=min(current.expires_at, now + REFRESH_RETRY_S))

    async def _fetch(self, project_id: str | None) -> _Token:
        body = _token_request(
            self._user, self._password.get_secret_value(), self._domain, project_id
        )
        headers = {"Content-Type": "application/json;charset=utf8"}
        started = self._clock()
        context: ApiErrorContext = {"method": "POST", "url": str(self._tokens_url)}
        status, answer_headers, raw = await exchange(
            self._session,
            "POST",
            self._tokens_url,
            headers=headers,
            body=body,
            deadlines=self._deadlines,
            context=lambda: context,
            label="IAM",
        )
        return self._parse(status, answer_headers, raw, started, project_id)

    def _parse(
        self,
        status: int,
        headers: Mapping[str, str],
        raw: bytes,
        started: float,
        project_id: str | None,
    ) -> _Token:
        context: ApiErrorContext = {
            "status": status,
            "method": "POST",
            "url": str(self._tokens_url),
            "project_id": project_id,
        }
        if not 200 <= status < 300:
            raise self._failure(status, headers, raw, context)
        value = headers.get(HEADER_SUBJECT_TOKEN)
        if not value:
            raise MalformedResponse("IAM answered without X-Subject-Token", body=raw, **context)
        try:
            lifetime = _expiry_seconds(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            detail = f"no usable token.expires_at: {type(exc).__name__}"
            raise MalformedResponse(
                "IAM token body unusable", body=raw, detail=detail, **context
            ) from exc
        margin = min(self._refresh_margin_s, lifetime / 2)
        log.info(
            "IAM token for %s (scope %s) valid for %.0f s",
            self.credential_id,
            project_id or "domain",
            lifetime,
        )
        expires_at = started + lifetime
        return _Token(SecretStr(value), refresh_at=expires_at - margin, expires_at=expires_at)

    def _failure(
        self, status: int, headers: Mapping[str, str], raw: bytes, context: ApiErrorContext
    ) -> BridgeError:
        return iam_error_for(
            status,
            raw,
            credential_id=self.credential_id,
            password=self._password.get_secret_value(),
            retry_after_s=parse_retry_after(headers.get("Retry-After"), self._wall_clock()),
            context=context,
        )


class NoAuth:
    """Sends requests without credentials: the simulator when started without any."""

    @property
    def credential_id(self) -> str:
        return "anonymous"

    async def apply(self, request: OutgoingRequest, project_id: str | None) -> None:
        return None

    def invalidate(self, request: OutgoingRequest) -> bool:
        return False

    def __repr__(self) -> str:
        return "<NoAuth>"


def auth_from_settings(
    settings: AuthSettings, api: ApiSettings, session: aiohttp.ClientSession
) -> Auth:
    """The ``Auth`` the settings ask for; the IAM token auth borrows ``session``.

    ``AuthSettings`` has already checked that the chosen mode has its credentials.
    """
    mode = settings.mode
    if mode == "aksk":
        ak, sk = _needed(settings.ak, "ak", mode), _needed(settings.sk, "sk", mode)
        return AkSkAuth(ak, sk, security_token=settings.security_token)
    if mode == "token":
        return IamTokenAuth(
            session,
            api.iam_url,
            user=_needed(settings.user, "user", mode),
            password=_needed(settings.password, "password", mode),
            domain=_needed(settings.domain, "domain", mode),
            timeout_s=api.request_timeout_s,
        )
    return NoAuth()


def _needed(value: T | None, name: str, mode: str) -> T:
    # AuthSettings validates this already; a model built with model_construct() skips that.
    if value is None or value == "":
        raise ConfigError(f"auth mode {mode!r} needs {name}")
    return value
