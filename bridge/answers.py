"""What a DLI or IAM HTTP answer means: a validated model, or the bridge error it stands for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Unpack

import aiohttp
import orjson
import yarl
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ValidationError

from bridge.deadlines import Deadlines
from bridge.errors import (
    ApiError,
    ApiErrorContext,
    ApiRejected,
    ApiUnavailable,
    AuthError,
    JobNotFound,
    MalformedResponse,
    RateLimited,
)

__all__ = [
    "JOB_NOT_FOUND_CODE",
    "REQUEST_ID_HEADER",
    "Answer",
    "Call",
    "check_success",
    "error_for",
    "exchange",
    "iam_error_for",
    "malformed",
    "validate",
]

JOB_NOT_FOUND_CODE = "DLI.16001"
REQUEST_ID_HEADER = "X-Request-Id"
# API Gateway codes come as "APIG.xxxx" on some pages and "APIGW.xxxx" on others.
_GATEWAY_PREFIXES = ("APIG.", "APIGW.")
_GATEWAY_NO_SUCH_API = "0101"
_GATEWAY_THROTTLED = "0308"
_MESSAGE_LIMIT = 300
_IAM_MESSAGE_LIMIT = 200

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call:
    """One logical API call, whatever number of attempts it takes."""

    method: str
    url: yarl.URL
    project_id: str | None
    job_id: str | int | None = None

    def context(self, **extra: Unpack[ApiErrorContext]) -> ApiErrorContext:
        ctx: ApiErrorContext = {
            "method": self.method,
            "url": str(self.url),
            "project_id": self.project_id,
        }
        ctx.update(extra)
        return ctx


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, whatever its status, with the only two headers we read."""

    status: int
    body: bytes
    retry_after: str | None
    request_id: str | None


def error_fields(body: bytes) -> tuple[str | None, str, str | None]:
    """``(error_code, error_msg, request_id)`` from a DLI or API Gateway error body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:_MESSAGE_LIMIT].decode("utf-8", "replace"), None
    if not isinstance(doc, dict):
        return None, "", None
    code = doc.get("error_code")
    message = doc.get("error_msg") or doc.get("message") or ""
    request_id = doc.get("request_id")
    return (
        str(code) if code is not None else None,
        str(message)[:_MESSAGE_LIMIT],
        str(request_id) if request_id is not None else None,
    )


def is_gateway(code: str | None, number: str) -> bool:
    return code is not None and any(code == p + number for p in _GATEWAY_PREFIXES)


def error_for(answer: Answer, call: Call, retry_after_s: float | None) -> ApiError:
    """The bridge error a non-2xx HTTP answer stands for."""
    status = answer.status
    code, message, body_request_id = error_fields(answer.body)
    ctx = call.context(status=status, code=code, request_id=answer.request_id or body_request_id)
    text = f"{call.method} {call.url.path} answered {status} {code or ''}: {message}".rstrip(": ")
    if status == 429 or is_gateway(code, _GATEWAY_THROTTLED):
        return RateLimited(text, retry_after_s=retry_after_s, **ctx)
    if status >= 500:
        return ApiUnavailable(text, **ctx)
    if is_gateway(code, _GATEWAY_NO_SUCH_API):
        # The gateway knows no such API: a wrong endpoint, which must never read as "not found".
        return ApiRejected(f"{text} (is the endpoint right?)", **ctx)
    if status in (401, 403):
        return AuthError(text, **ctx)
    if call.job_id is not None and (code == JOB_NOT_FOUND_CODE or status == 404):
        return JobNotFound(text, job_id=call.job_id, **ctx)
    return ApiRejected(text, **ctx)


def malformed(
    what: str, answer: Answer, call: Call, *, detail: str = "", reason: str = "invalid"
) -> MalformedResponse:
    ctx = call.context(status=answer.status, request_id=answer.request_id)
    text = f"{call.method} {call.url.path}: {what}"
    return MalformedResponse(text, body=answer.body, detail=detail or what, reason=reason, **ctx)


def validate(model: type[R], doc: dict[str, Any], answer: Answer, call: Call) -> R:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise malformed("the answer does not fit the schema", answer, call, detail=detail) from exc


def check_success(flag: bool | None, message: str | None, answer: Answer, call: Call) -> None:
    # DLI may answer 200 with is_success "false" and the reason in `message`.
    if flag is False:
        ctx = call.context(status=answer.status, request_id=answer.request_id)
        raise ApiRejected(f"{call.method} {call.url.path} refused: {message or ''}", **ctx)


# --- IAM ------------------------------------------------------------------------------------


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


def iam_error_for(
    status: int,
    raw: bytes,
    *,
    credential_id: str,
    password: str,
    retry_after_s: float | None,
    context: ApiErrorContext,
) -> ApiError:
    """The bridge error a non-2xx answer to an IAM token request stands for.

    IAM answers in Keystone's ``{"error": {...}}`` shape or the gateway's ``error_code`` one;
    ``password`` is scrubbed from whatever IAM echoes back.
    """
    code, message = _iam_error_text(raw, password)
    ctx: ApiErrorContext = {**context, "status": status, "code": code}
    text = f"IAM refused the token request for {credential_id} ({status} {message})"
    if status == 429:
        return RateLimited(text, retry_after_s=retry_after_s, **ctx)
    if 400 <= status < 500:
        return AuthError(text, **ctx)
    return ApiUnavailable(text, **ctx)


# --- the exchange ---------------------------------------------------------------------------


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: yarl.URL,
    *,
    headers: Mapping[str, str],
    body: bytes,
    deadlines: Deadlines,
    context: Callable[[], ApiErrorContext],
    label: str = "",
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One HTTP request and its whole answer; no answer at all becomes ``ApiUnavailable``.

    The one place aiohttp's failures (timeouts, refused or reset connections, broken
    answers) are mapped, for the DLI client and the IAM token auth alike; ``label`` prefixes
    the message (``"IAM"``). ``context`` is called only to name a failure. ``deadlines`` bounds
    the whole exchange, the body included (see ``Deadlines`` for its precision).
    """
    prefix = f"{label}: " if label else ""
    try:
        async with (
            deadlines(),
            session.request(method, url, headers=headers, data=body or None) as response,
        ):
            raw = await response.read()
    except TimeoutError as exc:
        text = f"{prefix}no answer within {deadlines.timeout_s:g} s"
        raise ApiUnavailable(text, **context()) from exc
    except aiohttp.ClientError as exc:
        text = f"{prefix}request failed: {type(exc).__name__}: {exc}"
        raise ApiUnavailable(text, **context()) from exc
    return response.status, response.headers, raw
