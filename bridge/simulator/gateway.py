"""The simulated API gateway in front of DLI and IAM: request ids, auth, throttling, faults."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from bridge.errors import AuthError
from bridge.models import JsonDict
from bridge.ratelimit import TokenBucket
from bridge.signing import verify_signature
from bridge.simulator.fleet import Fleet
from bridge.simulator.records import SimRejected, SimulatorConfig, fault_problems

__all__ = ["JSON_CONTENT_TYPE", "Faults", "Gateway", "Token", "dli_error", "json_response"]

Handler = Callable[[web.Request], Any]

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
_IAM_INFO = "Incorrect IAM authentication information: "  # APIG.0301's message prefix
# Gateway/ELB answers a faulty backend produces: (status, code or None for an HTML page, text).
_SERVER_ERRORS = (
    (500, "DLI.10001", "Internal error, please try again later."),
    (502, "APIG.0201", "Backend unavailable"),
    (503, None, "503 Service Temporarily Unavailable"),
    (504, "APIG.0201", "Backend timeout"),
)
_MALFORMED = ("truncated", "html", "payload_string", "field_types")
_REQUEST_ID = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class Faults:
    """Fault settings; ``None`` = inherit (per project) or off (throttle, globally)."""

    latency_s: float | None = None
    error_rate: float | None = None
    malformed_rate: float | None = None
    throttle_per_s: float | None = None

    def over(self, base: Faults) -> Faults:
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in merged.items() if v is not None})


@dataclass
class Token:
    """A token IAM issued, as the gateway checks it."""

    user: str
    project_id: str | None  # None: domain-scoped
    expires_at: float


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
    )


def dli_error(code: str, message: str, status: int = 400) -> web.Response:
    # DLI's own errors carry no request_id in the body (the gateway's do).
    return json_response({"error_code": code, "error_msg": message}, status)


class Gateway:
    """What Huawei's API gateway does before DLI or IAM answer, and how a sick backend fails.

    Owns the table of issued tokens (IAM adds to it through ``issue_token``), the per-project
    throttling buckets (``ratelimit.TokenBucket`` on the simulator's clock) and the
    fault settings; counts refusals and injected faults in the simulator's ``requests``.
    """

    def __init__(
        self,
        fleet: Fleet,
        requests: Counter[tuple[str, str]],
        config: SimulatorConfig,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.auth_required = bool(config.aksk or config.users)
        self._tokens: dict[str, Token] = {}
        self._fleet = fleet
        self._requests = requests
        self._aksk = config.aksk
        self._retry_after = config.retry_after
        self._clock = clock
        self._faults = Faults(
            config.latency_s, config.error_rate, config.malformed_rate, config.throttle_per_s
        )
        self._project_faults: dict[str, Faults] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._fault_rng = random.Random(f"{config.seed}/faults")

    @property
    def token_count(self) -> int:
        return len(self._tokens)

    def issue_token(self, token_id: str, token: Token) -> None:
        """Remember a token IAM issued, so later calls that carry it pass."""
        self._tokens[token_id] = token

    def expire_tokens(self) -> None:
        """Make every token issued so far read as expired."""
        for token in self._tokens.values():
            token.expires_at = -math.inf

    def set_faults(self, project_id: str | None, change: Faults) -> None:
        """Lay ``change`` over the faults of one project or (``None``) of every project."""
        problems = fault_problems(**asdict(change))
        if problems:
            raise SimRejected("bad fault settings: " + "; ".join(problems))
        if project_id is None:
            self._faults = change.over(self._faults)
            self._buckets.clear()
            return
        self._fleet.project(project_id)
        self._project_faults[project_id] = change.over(
            self._project_faults.get(project_id, Faults())
        )
        self._buckets.pop(project_id, None)

    def _faults_for(self, project_id: str) -> Faults:
        own = self._project_faults.get(project_id)
        return own.over(self._faults) if own else self._faults

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request ids on every answer; DLI.0001 for bad parameters, APIG.0101 for no such API."""
        request_id = uuid.uuid4().hex
        request[_REQUEST_ID] = request_id
        try:
            response: web.StreamResponse = await handler(request)
        except SimRejected as exc:
            response = dli_error(exc.code, exc.message, exc.status)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response = self.error(
                request,
                404,
                "APIG.0101",
                "The API does not exist or has not been published in the environment",
            )
        response.headers["X-Request-Id"] = request_id
        return response

    def error(
        self,
        request: web.Request,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """The gateway's own error shape, which carries the request id."""
        body = {"error_code": code, "error_msg": message, "request_id": request[_REQUEST_ID]}
        return json_response(body, status, headers)

    async def authenticate(
        self, request: web.Request, project_id: str | None
    ) -> web.Response | None:
        """None when the caller may go on, else the gateway's refusal."""
        if not self.auth_required:
            return None
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            return self._check_token(request, token, project_id)
        if "Authorization" in request.headers:
            return await self._check_signature(request)
        return self._unauthorized(request, _IAM_INFO + "x-auth-token not found")

    def _unauthorized(self, request: web.Request, message: str) -> web.Response:
        self._requests[("unauthorized", request.match_info.get("project_id", ""))] += 1
        return self.error(request, 401, "APIG.0301", message)

    def _check_token(
        self, request: web.Request, token: str, project_id: str | None
    ) -> web.Response | None:
        issued = self._tokens.get(token)
        if issued is None:
            return self._unauthorized(request, _IAM_INFO + "decrypt token fail")
        if issued.expires_at <= self._clock():
            return self._unauthorized(request, _IAM_INFO + "token expires")
        if project_id is not None and issued.project_id != project_id:
            # A token is good for the project it was scoped to; DLI calls elsewhere are refused.
            self._requests[("forbidden", project_id)] += 1
            return self.error(
                request, 403, "APIG.0302", "The IAM user is not authorized to access the API."
            )
        return None

    async def _check_signature(self, request: web.Request) -> web.Response | None:
        body = await request.read()
        try:
            verify_signature(
                request.method,
                request.rel_url.raw_path,
                request.query.items(),
                request.headers,
                body,
                secret_for=self._aksk.get,
                now=datetime.fromtimestamp(self._clock(), UTC),
            )
        except AuthError:
            return self._unauthorized(request, _IAM_INFO + "verify aksk signature fail")
        return None

    async def dli_gate(self, request: web.Request, route: str) -> web.Response | None:
        """Everything the gateway and a sick backend do before DLI answers normally."""
        project_id = request.match_info["project_id"]
        self._requests[(route, project_id)] += 1
        denied = await self.authenticate(request, project_id)
        if denied is not None:
            return denied
        if project_id not in self._fleet.projects:
            # Our choice: the gateway's documented "project unavailable" (APIG.0310, 403).
            self._requests[("forbidden", project_id)] += 1
            return self.error(request, 403, "APIG.0310", "The project is unavailable.")
        faults = self._faults_for(project_id)
        throttled = self._throttle(request, project_id, faults.throttle_per_s)
        if throttled is not None:
            return throttled
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.error_rate and self._fault_rng.random() < faults.error_rate:
            self._requests[("error", project_id)] += 1
            return self._server_error(request)
        return None

    def _throttle(
        self, request: web.Request, project_id: str, rate: float | None
    ) -> web.Response | None:
        if rate is None or rate <= 0:
            return None
        bucket = self._buckets.get(project_id)
        if bucket is None:
            bucket = TokenBucket(rate, max(1, int(rate)), clock=self._clock)
            self._buckets[project_id] = bucket
        if bucket.try_acquire():
            return None
        wait = (1.0 - bucket.level) / rate
        self._requests[("throttled", project_id)] += 1
        per = "1 second" if rate >= 1 else "1 minute"
        limit = round(rate if rate >= 1 else rate * 60)
        message = (
            "The throttling threshold has been reached: "
            f"policy user over ratelimit,limit:{limit},time:{per}"
        )
        headers = (
            {"Retry-After": str(max(1, math.ceil(min(wait, 60.0))))} if self._retry_after else None
        )
        return self.error(request, 429, "APIG.0308", message, headers)

    def _server_error(self, request: web.Request) -> web.Response:
        status, code, message = self._fault_rng.choice(_SERVER_ERRORS)
        if code is None:
            # The load balancer in front of the gateway answers with its own HTML page.
            page = (
                f"<html><head><title>{message}</title></head><body><h1>{message}</h1></body></html>"
            )
            return web.Response(text=page, status=status, content_type="text/html")
        if code.startswith("DLI."):
            return dli_error(code, message, status)
        return self.error(request, status, code, message)

    def ok(self, project_id: str, payload: JsonDict, key: str) -> web.Response:
        """200 with ``payload``, or with it broken at ``key`` as often as malformed_rate says."""
        rate = self._faults_for(project_id).malformed_rate
        if rate and self._fault_rng.random() < rate:
            self._requests[("malformed", project_id)] += 1
            return web.Response(
                body=self._malformed(payload, key), headers={"Content-Type": JSON_CONTENT_TYPE}
            )
        return json_response(payload)

    def _malformed(self, payload: JsonDict, key: str) -> bytes:
        kind = self._fault_rng.choice(_MALFORMED)
        raw = orjson.dumps(payload)
        if kind == "truncated":
            return raw[: len(raw) // 2]
        if kind == "html":
            return (
                b"<html><body><h1>Bad Gateway</h1>upstream sent an invalid response</body></html>"
            )
        broken = orjson.loads(raw)
        rows = broken[key]["jobs"] if key == "job_list" else [broken[key]]
        if kind == "payload_string" or not rows:
            broken[key] = "service temporarily unavailable"
        else:
            rows[0].update(job_id=f"job-{rows[0]['job_id']}", create_time="yesterday")
        return orjson.dumps(broken)
