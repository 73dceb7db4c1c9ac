"""A stand-in for the Huawei Cloud DLI Flink job API and IAM, with fault injection (aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from bridge import fleet
from bridge.auth import verify_signature
from bridge.errors import ApiRejected, AuthError, ConfigError, JobNotFound
from bridge.fleet import Change, Fleet, ListQuery
from bridge.lifecycle import JobStatus

__all__ = ["DEFAULT_PORT", "Change", "Simulator", "SimulatorConfig"]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
Handler = Callable[[web.Request], Any]

DEFAULT_PORT = 8780  # `dli-bridge simulate` and docker-compose.yml
_JSON = "application/json;charset=UTF-8"
_JOBS = "/v1.0/{project_id}/streaming/jobs"
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
class SimulatorConfig:
    """What the simulator serves and how badly it behaves. Credentials never show in repr.

    With no ``aksk`` and no ``users`` no call needs authentication.
    """

    projects: int = 3
    jobs_per_project: int = 10
    seed: int = 0
    change_rate: float = 0.0  # expected changes per second across the fleet; 0 = by hand only
    aksk: Mapping[str, str] = field(default_factory=dict, repr=False)  # AK -> SK
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # user -> password
    domain: str = "sim-domain"
    token_ttl_s: float = 86400.0
    throttle_per_s: float | None = None  # per-project rate; above it 429 APIG.0308
    retry_after: bool = True  # whether 429s carry Retry-After
    latency_s: float = 0.0
    error_rate: float = 0.0  # fraction of DLI calls answered 5xx
    malformed_rate: float = 0.0  # fraction of DLI calls answered 200 with a broken body
    region: str = "sim-1"

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be between 0 and 1"
            for name in ("error_rate", "malformed_rate")
            if not 0.0 <= getattr(self, name) <= 1.0
        ]
        problems += [
            f"{name} must not be negative"
            for name in ("projects", "jobs_per_project", "change_rate", "latency_s")
            if getattr(self, name) < 0
        ]
        if self.token_ttl_s <= 0:
            problems.append("token_ttl_s must be positive")
        if self.change_rate > 0 and self.projects == 0:
            problems.append("change_rate needs at least one project to change")
        if problems:
            raise ConfigError("invalid simulator configuration", problems)


@dataclass(frozen=True)
class _Faults:
    """Fault settings; ``None`` = inherit (per project) or off (throttle, globally)."""

    latency_s: float | None = None
    error_rate: float | None = None
    malformed_rate: float | None = None
    throttle_per_s: float | None = None

    def over(self, base: _Faults) -> _Faults:
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in merged.items() if v is not None})


class _Bucket:
    """Token bucket on the monotonic clock; ``take`` returns 0 or the seconds to wait."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class _Token:
    user: str
    project_id: str | None  # None: domain-scoped
    expires_at: float


def _json(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        headers={"Content-Type": _JSON, **(headers or {})},
    )


def _dli_error(code: str, message: str, status: int = 400) -> web.Response:
    # DLI's own errors carry no request_id in the body (the gateway's do).
    return _json({"error_code": code, "error_msg": message}, status)


def _iam_error(status: int, title: str, message: str) -> web.Response:
    # IAM answers in Keystone's error shape, not the gateway's error_code/error_msg.
    return _json({"error": {"code": status, "title": title, "message": message}}, status)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


class Simulator:
    """A seeded DLI fleet behind the documented HTTP surface, plus ground truth and controls.

    Build it, then ``async with sim.serve() as base_url`` (or mount ``sim.app()``); while
    serving with ``change_rate > 0`` a background walk changes jobs. ``requests`` counts calls
    by (route, project_id): routes list, detail, token, projects, auth_projects; outcomes
    unauthorized, forbidden, throttled, error (injected 5xx) and malformed.
    """

    def __init__(self, config: SimulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.fleet = Fleet(
            projects=config.projects,
            jobs_per_project=config.jobs_per_project,
            seed=config.seed,
            region=config.region,
            now_ms=self._now_ms(),
        )
        self.project_ids: list[str] = list(self.fleet.projects)
        self.requests: Counter[tuple[str, str]] = Counter()
        self._auth_required = bool(config.aksk or config.users)
        self._tokens: dict[str, _Token] = {}
        self._faults = _Faults(
            config.latency_s, config.error_rate, config.malformed_rate, config.throttle_per_s
        )
        self._project_faults: dict[str, _Faults] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._fault_rng = random.Random(f"{config.seed}/faults")

    def __repr__(self) -> str:
        auth = "on" if self._auth_required else "off"
        return (
            f"<Simulator projects={len(self.project_ids)} jobs={len(self.fleet)} "
            f"changes={len(self.fleet.log)} auth={auth}>"
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- control and ground truth --------------------------------------------------------------

    def create_job(self, project_id: str, **fields: Any) -> int:
        return self.fleet.create(project_id, self._now_ms(), **fields).job_id

    def set_status(self, project_id: str, job_id: int, status: str) -> None:
        self.fleet.set_status(project_id, job_id, status, self._now_ms())

    def update_job(self, project_id: str, job_id: int, **fields: Any) -> None:
        self.fleet.update(project_id, job_id, self._now_ms(), **fields)

    def delete_job(self, project_id: str, job_id: int) -> None:
        self.fleet.delete(project_id, job_id, self._now_ms())

    def step(self, changes: int = 1) -> list[Change]:
        made = self.fleet.step(changes, self._now_ms())
        log.debug("simulator made %d changes", len(made))
        return made

    def changes(self, since: int = 0) -> list[Change]:
        return self.fleet.log[max(0, since) :]

    def job(self, project_id: str, job_id: int) -> dict[str, Any]:
        return fleet.detail(self.fleet.get(project_id, job_id))

    def expire_tokens(self) -> None:
        for token in self._tokens.values():
            token.expires_at = -math.inf

    def set_faults(
        self,
        project_id: str | None = None,
        *,
        latency_s: float | None = None,
        error_rate: float | None = None,
        malformed_rate: float | None = None,
        throttle_per_s: float | None = None,
    ) -> None:
        """Change fault injection for one project or (``None``) for all.

        ``None`` leaves a setting as it is; ``throttle_per_s=0`` turns throttling off (use a
        tiny rate such as 0.001 for a 429 storm).
        """
        change = _Faults(latency_s, error_rate, malformed_rate, throttle_per_s)
        if any(r is not None and not 0.0 <= r <= 1.0 for r in (error_rate, malformed_rate)):
            raise ConfigError("error_rate and malformed_rate must be between 0 and 1")
        if project_id is None:
            self._faults = change.over(self._faults)
            self._buckets.clear()
            return
        self.fleet.project(project_id)
        self._project_faults[project_id] = change.over(
            self._project_faults.get(project_id, _Faults())
        )
        self._buckets.pop(project_id, None)

    def _faults_for(self, project_id: str) -> _Faults:
        own = self._project_faults.get(project_id)
        return own.over(self._faults) if own else self._faults

    # --- serving -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gateway])
        routes = [
            web.get(_JOBS, self._list_jobs),
            web.get(_JOBS + "/{job_id}", self._show_job),
            web.post("/v3/auth/tokens", self._issue_token),
            web.get("/v3/auth/projects", self._auth_projects),
            web.get("/v3/projects", self._projects),
            web.get("/_sim/changes", self._sim_changes),
            web.post("/_sim/step", self._sim_step),
            web.post("/_sim/faults", self._sim_faults),
            web.post("/_sim/expire-tokens", self._sim_expire_tokens),
        ]
        app.add_routes(routes)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on ``host:port`` (0 = any free port) and yield the base URL."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
            bound = runner.addresses[0][1]
            url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
            log.info("simulator serving %s (%r)", url, self)
            async with asyncio.TaskGroup() as tasks:
                stop = asyncio.Event()
                if self.config.change_rate > 0:
                    tasks.create_task(self._walk(stop))
                try:
                    yield url
                finally:
                    stop.set()
        finally:
            await runner.cleanup()

    async def _walk(self, stop: asyncio.Event) -> None:
        """Apply ``change_rate`` changes per second (on average) until ``stop`` is set."""
        rate = self.config.change_rate
        tick = min(1.0, max(0.02, 1.0 / rate))
        loop = asyncio.get_running_loop()
        last, due = loop.time(), 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await stop.wait()
            now = loop.time()
            due += (now - last) * rate
            last = now
            if due >= 1.0:
                self.step(int(due))
                due -= int(due)

    # --- gateway: request ids, unknown routes, auth, throttling, faults --------------------------

    @web.middleware
    async def _gateway(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        request[_REQUEST_ID] = request_id
        try:
            response: web.StreamResponse = await handler(request)
        except ApiRejected as exc:
            response = _dli_error(exc.code or "DLI.0001", exc.message)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response = self._gateway_error(
                request,
                404,
                "APIG.0101",
                "The API does not exist or has not been published in the environment",
            )
        response.headers["X-Request-Id"] = request_id
        return response

    def _gateway_error(
        self,
        request: web.Request,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = {"error_code": code, "error_msg": message, "request_id": request[_REQUEST_ID]}
        return _json(body, status, headers)

    async def _authenticate(
        self, request: web.Request, project_id: str | None
    ) -> web.Response | None:
        """None when the caller may go on, else the gateway's refusal."""
        if not self._auth_required:
            return None
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            return self._check_token(request, token, project_id)
        if "Authorization" in request.headers:
            return await self._check_signature(request)
        return self._unauthorized(request, _IAM_INFO + "x-auth-token not found")

    def _unauthorized(self, request: web.Request, message: str) -> web.Response:
        self.requests[("unauthorized", request.match_info.get("project_id", ""))] += 1
        return self._gateway_error(request, 401, "APIG.0301", message)

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
            self.requests[("forbidden", project_id)] += 1
            return self._gateway_error(
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
                secret_for=self.config.aksk.get,
                now=datetime.fromtimestamp(self._clock(), UTC),
            )
        except AuthError:
            return self._unauthorized(request, _IAM_INFO + "verify aksk signature fail")
        return None

    async def _dli_gate(self, request: web.Request, route: str) -> web.Response | None:
        """Everything the gateway and a sick backend do before DLI answers normally."""
        project_id = request.match_info["project_id"]
        self.requests[(route, project_id)] += 1
        denied = await self._authenticate(request, project_id)
        if denied is not None:
            return denied
        if project_id not in self.fleet.projects:
            # Our choice: the gateway's documented "project unavailable" (APIG.0310, 403).
            self.requests[("forbidden", project_id)] += 1
            return self._gateway_error(request, 403, "APIG.0310", "The project is unavailable.")
        faults = self._faults_for(project_id)
        throttled = self._throttle(request, project_id, faults.throttle_per_s)
        if throttled is not None:
            return throttled
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.error_rate and self._fault_rng.random() < faults.error_rate:
            self.requests[("error", project_id)] += 1
            return self._server_error(request)
        return None

    def _throttle(
        self, request: web.Request, project_id: str, rate: float | None
    ) -> web.Response | None:
        if rate is None or rate <= 0:
            return None
        bucket = self._buckets.get(project_id)
        if bucket is None:
            bucket = self._buckets[project_id] = _Bucket(rate)
        wait = bucket.take()
        if wait == 0.0:
            return None
        self.requests[("throttled", project_id)] += 1
        per = "1 second" if rate >= 1 else "1 minute"
        limit = round(rate if rate >= 1 else rate * 60)
        message = (
            "The throttling threshold has been reached: "
            f"policy user over ratelimit,limit:{limit},time:{per}"
        )
        headers = (
            {"Retry-After": str(max(1, math.ceil(min(wait, 60.0))))}
            if self.config.retry_after
            else None
        )
        return self._gateway_error(request, 429, "APIG.0308", message, headers)

    def _server_error(self, request: web.Request) -> web.Response:
        status, code, message = self._fault_rng.choice(_SERVER_ERRORS)
        if code is None:
            # The load balancer in front of the gateway answers with its own HTML page.
            page = (
                f"<html><head><title>{message}</title></head><body><h1>{message}</h1></body></html>"
            )
            return web.Response(text=page, status=status, content_type="text/html")
        if code.startswith("DLI."):
            return _dli_error(code, message, status)
        return self._gateway_error(request, status, code, message)

    def _ok(self, project_id: str, payload: JsonDict, key: str) -> web.Response:
        rate = self._faults_for(project_id).malformed_rate
        if rate and self._fault_rng.random() < rate:
            self.requests[("malformed", project_id)] += 1
            return web.Response(body=self._malformed(payload, key), headers={"Content-Type": _JSON})
        return _json(payload)

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

    # --- DLI -----------------------------------------------------------------------------------

    async def _list_jobs(self, request: web.Request) -> web.Response:
        denied = await self._dli_gate(request, "list")
        if denied is not None:
            return denied
        project_id = request.match_info["project_id"]
        query = _list_query(request.query)
        total, jobs = self.fleet.query(project_id, query)
        now_ms = self._now_ms()
        rows = [
            fleet.detail_row(j) if query.show_detail else fleet.light_row(j, now_ms) for j in jobs
        ]
        payload = {
            "is_success": "true",
            "message": "",
            "job_list": {"total_count": total, "jobs": rows},
        }
        return self._ok(project_id, payload, "job_list")

    async def _show_job(self, request: web.Request) -> web.Response:
        denied = await self._dli_gate(request, "detail")
        if denied is not None:
            return denied
        project_id, raw_id = request.match_info["project_id"], request.match_info["job_id"]
        if not raw_id.isdigit():
            return _dli_error("DLI.0001", f"Invalid job_id: {raw_id}")
        try:
            job = self.fleet.get(project_id, int(raw_id))
        except JobNotFound:
            # DLI answers a missing job with 400 DLI.16001, not 404 (Terraform maps it to "gone").
            return _dli_error("DLI.16001", f"The job {raw_id} does not exist.")
        payload = {
            "is_success": "true",
            "message": "Job detail query succeeds.",
            "job_detail": fleet.detail(job),
        }
        return self._ok(project_id, payload, "job_detail")

    # --- IAM -----------------------------------------------------------------------------------

    def _user_id(self, name: str) -> str:
        return hashlib.sha256(f"{self.config.seed}/user/{name}".encode()).hexdigest()[:32]

    def _domain(self) -> JsonDict:
        return {"id": self.fleet.domain_id, "name": self.config.domain}

    def _scope(self, scope: Any) -> tuple[str, JsonDict] | None:
        """("project", {...}) or ("domain", {...}) for a valid scope, else None."""
        project = _dig(scope, "project")
        if isinstance(project, dict):
            for p in self.fleet.projects.values():
                if project.get("id") == p.id or project.get("name") == p.name:
                    return "project", {"id": p.id, "name": p.name, "domain": self._domain()}
            return None
        domain = _dig(scope, "domain")
        wanted = self._domain()
        if (
            isinstance(domain, dict)
            and domain
            and all(domain.get(k, v) == v for k, v in wanted.items())
        ):
            return "domain", wanted
        return None

    async def _issue_token(self, request: web.Request) -> web.Response:
        self.requests[("token", "")] += 1
        try:
            auth = orjson.loads(await request.read())["auth"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _iam_error(400, "Bad Request", "The request body has no 'auth' object.")
        if "password" not in (_dig(auth, "identity", "methods") or []):
            return _iam_error(400, "Bad Request", "Only the password method is supported here.")
        name = self._password_user(_dig(auth, "identity", "password", "user"))
        if name is None:
            return _iam_error(401, "Unauthorized", "The username or password is wrong.")
        scope = self._scope(_dig(auth, "scope"))
        if scope is None:
            message = "The request you have made requires authentication."
            return _iam_error(401, "Unauthorized", message)
        return self._token_response(request, name, scope)

    def _password_user(self, user: Any) -> str | None:
        """The IAM user name when name, password and account (domain) all match."""
        name, password, domain = (_dig(user, k) for k in ("name", "password", "domain"))
        if not isinstance(name, str) or self.config.users.get(name) != password:
            return None
        wanted = self._domain()
        if not isinstance(domain, dict) or any(domain.get(k, v) != v for k, v in wanted.items()):
            return None
        return name

    def _token_response(
        self, request: web.Request, user: str, scope: tuple[str, JsonDict]
    ) -> web.Response:
        now = self._clock()
        token_id = "MIIT" + secrets.token_urlsafe(192)
        kind, target = scope
        self._tokens[token_id] = _Token(
            user, target["id"] if kind == "project" else None, now + self.config.token_ttl_s
        )
        base = str(request.url.origin())
        body: JsonDict = {
            "expires_at": _iso(now + self.config.token_ttl_s),
            "issued_at": _iso(now),
            "methods": ["password"],
            kind: target,
            "roles": [{"id": "0", "name": "te_admin"}, {"id": "0", "name": "dli_adm"}],
            "user": {
                "domain": self._domain(),
                "id": self._user_id(user),
                "name": user,
                "password_expires_at": "",
            },
        }
        if not request.query.get("nocatalog"):
            body["catalog"] = self._catalog(base)
        return _json({"token": body}, 201, {"X-Subject-Token": token_id})

    def _catalog(self, base: str) -> list[JsonDict]:
        services = {"dli": f"{base}/v1.0/$(tenant_id)s", "iam": f"{base}/v3"}
        return [
            {
                "endpoints": [
                    {
                        "id": self._user_id(f"endpoint/{name}"),
                        "interface": "public",
                        "region": self.config.region,
                        "region_id": self.config.region,
                        "url": url,
                    }
                ],
                "id": self._user_id(f"service/{name}"),
                "name": name,
                "type": name,
            }
            for name, url in services.items()
        ]

    def _project_entries(self, base: str, name: str | None = None) -> list[JsonDict]:
        domain_id = self.fleet.domain_id
        return [
            {
                "id": p.id,
                "name": p.name,
                "domain_id": domain_id,
                "parent_id": domain_id,
                "is_domain": False,
                "enabled": True,
                "description": "",
                "links": {"self": f"{base}/v3/projects/{p.id}"},
            }
            for p in self.fleet.projects.values()
            if name is None or p.name == name
        ]

    async def _auth_projects(self, request: web.Request) -> web.Response:
        return await self._iam_list(request, "auth_projects", None)

    async def _projects(self, request: web.Request) -> web.Response:
        return await self._iam_list(request, "projects", request.query.get("name"))

    async def _iam_list(self, request: web.Request, route: str, name: str | None) -> web.Response:
        self.requests[(route, "")] += 1
        denied = await self._authenticate(request, None)
        if denied is not None:
            return denied
        base = str(request.url.origin())
        links = {"self": str(request.url), "previous": None, "next": None}
        return _json({"links": links, "projects": self._project_entries(base, name)})

    # --- ground truth and control over HTTP ------------------------------------------------------

    async def _sim_changes(self, request: web.Request) -> web.Response:
        since = _int(request.query.get("since", "0"), "since", 0, None)
        return _json({"changes": [c.as_dict() for c in self.changes(since)]})

    async def _sim_step(self, request: web.Request) -> web.Response:
        count = _int(request.query.get("changes", "1"), "changes", 0, None)
        return _json({"changes": [c.as_dict() for c in self.step(count)]})

    async def _sim_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
            self.set_faults(body.pop("project_id", None), **body)
        except (orjson.JSONDecodeError, TypeError, AttributeError, JobNotFound, ConfigError) as exc:
            return _json({"error": f"bad fault settings: {exc}"}, 400)
        return _json({"ok": True})

    async def _sim_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return _json({"ok": True, "expired": len(self._tokens)})


# --- list query parameters (reference §1.1) -----------------------------------------------------


def _int(raw: str, name: str, low: int, high: int | None) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiRejected(
            f"Invalid parameter {name}: {raw!r}, must be {bound}", status=400, code="DLI.0001"
        )
    return value


def _choice(query: MultiMapping[str], name: str, options: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in options:
        raise ApiRejected(f"Invalid parameter {name}: {value!r}", status=400, code="DLI.0001")
    return value


def _tags(raw: str | None) -> tuple[tuple[str, str], ...]:
    """Terraform sends tags as ``k1=v1,k2=v2``; every pair must match."""
    if not raw:
        return ()
    pairs = [part.split("=", 1) for part in raw.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise ApiRejected(f"Invalid parameter tags: {raw!r}", status=400, code="DLI.0001")
    return tuple((k.strip(), v.strip()) for k, v in pairs)


def _list_query(query: MultiMapping[str]) -> ListQuery:
    name = query.get("name")
    if name is not None and len(name) > 57:
        raise ApiRejected(
            "Invalid parameter name: longer than 57 characters", status=400, code="DLI.0001"
        )
    root = query.get("root_job_id")
    return ListQuery(
        job_type=_choice(query, "job_type", fleet.JOB_TYPES),
        status=_choice(query, "status", tuple(JobStatus)),
        queue_name=query.get("queue_name"),
        name=name,
        user_name=query.get("user_name"),
        tags=_tags(query.get("tags")),
        root_job_id=None if root is None else _int(root, "root_job_id", -(2**63), None),
        order=_choice(query, "order", ("asc", "desc")) or "desc",
        offset=_int(query.get("offset", "0"), "offset", 0, None),
        limit=_int(query.get("limit", "10"), "limit", 0, 100),
        show_detail=_flag(query.get("show_detail", "false"), "show_detail"),
    )


def _flag(raw: str, name: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ApiRejected(f"Invalid parameter {name}: {raw!r}", status=400, code="DLI.0001")
    return raw.lower() == "true"
