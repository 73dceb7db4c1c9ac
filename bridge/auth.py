"""Huawei Cloud authentication: AK/SK request signing (SDK-HMAC-SHA256) and IAM password tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote

import aiohttp
import orjson
import yarl
from pydantic import SecretStr

from bridge.errors import (
    ApiErrorContext,
    ApiUnavailable,
    AuthError,
    BridgeError,
    MalformedResponse,
    RateLimited,
)

__all__ = [
    "SIGNING_ALGORITHM",
    "AkSkAuth",
    "Auth",
    "IamTokenAuth",
    "OutgoingRequest",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "payload_hash",
    "sign_headers",
    "signature",
    "string_to_sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNING_ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
HEADER_SDK_DATE = "X-Sdk-Date"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_AUTHORIZATION = "Authorization"
HEADER_HOST = "Host"
SIGNATURE_ERROR_CODE = "APIG.0301"
# The gateway refuses a signature that does not bind these two headers.
REQUIRED_SIGNED_HEADERS = ("host", "x-sdk-date")

_AUTHORIZATION_RE = re.compile(
    rf"^{SIGNING_ALGORITHM} +Access=([^,\s]+), *SignedHeaders=([^,\s]+), *Signature=([0-9a-f]+)$"
)


def _encode(text: str) -> str:
    # RFC 3986 unreserved characters stay, everything else (including "/") becomes %XY.
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """The raw (percent-encoded) path, unquoted once, each segment re-encoded, ending in "/"."""
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else f"{encoded}/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (key, value) pairs sorted by key then value (before encoding), as ``k=v&...``."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(pairs))


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)
    return lowered


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The six-line canonical request; every name in ``signed_headers`` must be in ``headers``."""
    lowered = _lower_keys(headers)
    names = [name.lower() for name in signed_headers]
    header_block = "".join(f"{name}:{lowered[name].strip()}\n" for name in names)
    parts = (method.upper(), canonical_uri(path), canonical_query(query), header_block)
    return "\n".join((*parts, ";".join(names), payload_hash))


def payload_hash(body: bytes, headers: Mapping[str, str]) -> str:
    """Hex SHA-256 of the body, or the caller's declared ``X-Sdk-Content-Sha256`` for a body.

    As in Huawei's Python SDK an empty body always hashes to the empty-string digest; the Go SDK
    would use the declared value even then, which ``verify_signature`` also accepts.
    """
    if not body:
        return EMPTY_BODY_SHA256
    declared = _lower_keys(headers).get(HEADER_CONTENT_SHA256.lower())
    return declared or hashlib.sha256(body).hexdigest()


def string_to_sign(sdk_date: str, canonical: str) -> str:
    """``SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256 of the canonical request>``."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{SIGNING_ALGORITHM}\n{sdk_date}\n{digest}"


def signature(secret_key: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 keyed directly with the SK (no derivation chain, unlike AWS SigV4)."""
    return hmac.new(secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def authorization_header(ak: str, signed_headers: Sequence[str], sig: str) -> str:
    """The exact header value the gateway parses: a space after the algorithm, then ", "."""
    names = ";".join(signed_headers)
    return f"{SIGNING_ALGORITHM} Access={ak}, SignedHeaders={names}, Signature={sig}"


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def sdk_date(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC; a naive datetime is taken to be UTC already."""
    return _as_utc(now).astimezone(UTC).strftime(SDK_DATE_FORMAT)


def host_header(url: yarl.URL) -> str:
    """host[:port] with the scheme's default port dropped, as the HTTP client sends it."""
    return url.host_port_subcomponent or ""


def _signable(name: str) -> bool:
    # Nginx-based gateways drop header names containing "_" by default, so the official Python
    # SDK never signs them; neither do we. Authorization is the signature itself.
    return "_" not in name and name.lower() != HEADER_AUTHORIZATION.lower()


def sign_headers(
    method: str,
    url: yarl.URL,
    headers: Mapping[str, str],
    body: bytes,
    *,
    ak: str,
    sk: SecretStr,
    now: datetime,
) -> dict[str, str]:
    """Return ``headers`` plus Host (when absent), X-Sdk-Date and Authorization, all signed.

    Every header present is signed (names with "_" excepted); a stale X-Sdk-Date or
    Authorization in ``headers`` is replaced.
    """
    replaced = {HEADER_SDK_DATE.lower(), HEADER_AUTHORIZATION.lower()}
    out = {name: value for name, value in headers.items() if name.lower() not in replaced}
    date = sdk_date(now)
    out[HEADER_SDK_DATE] = date
    if HEADER_HOST.lower() not in _lower_keys(out):
        out[HEADER_HOST] = host_header(url)
    signed = sorted({name.lower() for name in out if _signable(name)})
    canonical = canonical_request(
        method, url.raw_path, url.query.items(), out, signed, payload_hash(body, out)
    )
    sig = signature(sk.get_secret_value(), string_to_sign(date, canonical))
    out[HEADER_AUTHORIZATION] = authorization_header(ak, signed, sig)
    return out


def _reject(reason: str) -> AuthError:
    log.debug("AK/SK signature rejected: %s", reason)
    return AuthError(
        f"Incorrect IAM authentication information: {reason}",
        status=401,
        code=SIGNATURE_ERROR_CODE,
    )


def _parse_authorization(value: str | None) -> tuple[str, list[str], str]:
    match = _AUTHORIZATION_RE.match(value.strip()) if value else None
    if match is None:
        raise _reject("missing or malformed Authorization header")
    ak, signed, sig = match.groups()
    return ak, signed.split(";"), sig


def _check_date(value: str | None, now: datetime, max_skew_s: float) -> None:
    try:
        signed_at = datetime.strptime(value or "", SDK_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _reject("missing or malformed X-Sdk-Date") from None
    if abs((_as_utc(now) - signed_at).total_seconds()) > max_skew_s:
        raise _reject("X-Sdk-Date is too far from the server time")


def _check_signed_names(names: Sequence[str], lowered: Mapping[str, str]) -> None:
    missing = [name for name in REQUIRED_SIGNED_HEADERS if name not in names]
    absent = [name for name in names if name not in lowered]
    if missing or absent:
        raise _reject(f"signed headers incomplete (unsigned {missing}, not sent {absent})")


def _payload_candidates(body: bytes, headers: Mapping[str, str]) -> set[str]:
    candidates = {payload_hash(body, headers)}
    declared = _lower_keys(headers).get(HEADER_CONTENT_SHA256.lower())
    if declared and not body:
        candidates.add(declared)
    return candidates


def verify_signature(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew_s: float = 900.0,
) -> str:
    """Check an AK/SK-signed request as the API gateway does and return its AK.

    ``path`` is the raw (percent-encoded) request path, e.g. aiohttp's ``request.rel_url.raw_path``;
    ``query`` the decoded pairs (``request.query.items()``). Raises ``AuthError`` (401,
    ``APIG.0301``) on a missing/malformed/wrong signature, an unknown AK, unsigned Host or
    X-Sdk-Date, or an X-Sdk-Date more than ``max_skew_s`` away from ``now``.
    """
    lowered = _lower_keys(headers)
    ak, names, provided = _parse_authorization(lowered.get(HEADER_AUTHORIZATION.lower()))
    secret = secret_for(ak)
    if secret is None:
        raise _reject("unknown access key")
    _check_date(lowered.get(HEADER_SDK_DATE.lower()), now, max_skew_s)
    _check_signed_names(names, lowered)
    pairs = list(query)
    date = lowered[HEADER_SDK_DATE.lower()]
    for body_hash in _payload_candidates(body, lowered):
        canonical = canonical_request(method, path, pairs, lowered, names, body_hash)
        expected = signature(secret, string_to_sign(date, canonical))
        if hmac.compare_digest(expected, provided):
            return ak
    raise _reject("verify aksk signature fail")


# --- the seam the DLI client codes against -------------------------------------------------

HEADER_AUTH_TOKEN = "X-Auth-Token"
HEADER_SUBJECT_TOKEN = "X-Subject-Token"
HEADER_PROJECT_ID = "X-Project-Id"
HEADER_SECURITY_TOKEN = "X-Security-Token"
DEFAULT_REFRESH_MARGIN_S = 600.0
DEFAULT_IAM_TIMEOUT_S = 10.0
# While a refresh keeps failing but the current token is still valid, ask IAM at most this often.
REFRESH_RETRY_S = 30.0
_IAM_MESSAGE_LIMIT = 200


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


def _iam_error_text(raw: bytes, password: str) -> tuple[str | None, str]:
    """IAM's error code and message, from either of its two body shapes, password scrubbed."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return None, ""
    error = doc.get("error")
    nested: dict[str, Any] = error if isinstance(error, dict) else {}
    code = doc.get("error_code") or nested.get("code")
    message = str(doc.get("error_msg") or nested.get("message") or "")[:_IAM_MESSAGE_LIMIT]
    if password:
        message = message.replace(password, "**********")
    return (str(code) if code is not None else None), message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


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
    lifetime = (_as_utc(expires) - _as_utc(issued)).total_seconds()
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
        self._timeout_s = timeout_s
        self._clock = clock
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
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.post(self._tokens_url, data=body, headers=headers) as response,
            ):
                raw = await response.read()
                return self._parse(response.status, response.headers, raw, started, project_id)
        except TimeoutError as exc:
            raise ApiUnavailable(
                f"IAM did not answer within {self._timeout_s} s", **context
            ) from exc
        except aiohttp.ClientError as exc:
            raise ApiUnavailable(f"IAM request failed: {type(exc).__name__}", **context) from exc

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
        code, message = _iam_error_text(raw, self._password.get_secret_value())
        context["code"] = code
        text = f"IAM refused the token request for {self.credential_id} ({status} {message})"
        if status == 429:
            return RateLimited(text, retry_after_s=_retry_after(headers), **context)
        if 400 <= status < 500:
            return AuthError(text, **context)
        return ApiUnavailable(text, **context)
