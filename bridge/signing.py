"""AK/SK request signatures (SDK-HMAC-SHA256): signing, and verifying as Huawei's gateway does."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import yarl
from pydantic import SecretStr

from bridge.errors import AuthError

__all__ = [
    "EMPTY_BODY_SHA256",
    "SIGNING_ALGORITHM",
    "as_utc",
    "authorization_header",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "host_header",
    "payload_hash",
    "sdk_date",
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


def as_utc(moment: datetime) -> datetime:
    """``moment`` with a timezone; a naive datetime is taken to be UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def sdk_date(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC; a naive datetime is taken to be UTC already."""
    return as_utc(now).astimezone(UTC).strftime(SDK_DATE_FORMAT)


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
    if abs((as_utc(now) - signed_at).total_seconds()) > max_skew_s:
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
