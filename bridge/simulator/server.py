"""The simulator's HTTP server (aiohttp): DLI job calls, IAM behind the gateway, /_sim controls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from bridge.errors import ConfigError
from bridge.lifecycle import JobStatus
from bridge.models import JsonDict
from bridge.simulator import render
from bridge.simulator.fleet import JOB_TYPES, Fleet
from bridge.simulator.gateway import Faults, Gateway, json_response
from bridge.simulator.iam import Iam
from bridge.simulator.records import ListQuery, SimRejected, SimulatorConfig, TruthEntry

__all__ = ["DEFAULT_PORT", "MAX_STEP", "Simulator"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8780  # `dli-bridge simulate` and docker-compose.yml
_JOBS = "/v1.0/{project_id}/streaming/jobs"
MAX_STEP = 100_000  # changes one POST /_sim/step may ask for
# The background walk applies at most this many changes before it yields to the event loop,
# so even the highest change rate leaves the server answering and signals handled.
_WALK_CHUNK = 200


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
        self._gateway = Gateway(self.fleet, self.requests, config, clock=clock)
        self._iam = Iam(self.fleet, self._gateway, self.requests, config, clock=clock)

    def __repr__(self) -> str:
        auth = "on" if self._gateway.auth_required else "off"
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

    def add_project(self, jobs: int | None = None) -> str:
        """A new project (``jobs`` jobs, default ``jobs_per_project``) that IAM lists from now."""
        count = self.config.jobs_per_project if jobs is None else jobs
        project_id = self.fleet.add_project(count, self._now_ms())
        self.project_ids.append(project_id)
        return project_id

    def remove_project(self, project_id: str) -> None:
        """Delete a project: IAM stops listing it, its job calls answer 404."""
        self.fleet.remove_project(project_id)
        self.project_ids.remove(project_id)

    def step(self, changes: int = 1) -> list[TruthEntry]:
        made = self.fleet.step(changes, self._now_ms())
        log.debug("simulator made %d changes", len(made))
        return made

    def changes(self, since: int = 0) -> list[TruthEntry]:
        return self.fleet.log[max(0, since) :]

    def job(self, project_id: str, job_id: int) -> JsonDict:
        """One job as the Job Details call shows it; SimRejected (DLI.16001) if there is none."""
        return render.detail(self.fleet.get(project_id, job_id))

    def jobs(self, project_id: str) -> list[JsonDict]:
        """Every job of a project (edge children included) as detail dicts, oldest first."""
        return [render.detail(job) for job in self.fleet.project(project_id).ordered()]

    def expire_tokens(self) -> None:
        self._gateway.expire_tokens()

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
        change = Faults(latency_s, error_rate, malformed_rate, throttle_per_s)
        self._gateway.set_faults(project_id, change)

    # --- serving -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gateway.middleware])
        routes = [
            web.get(_JOBS, self._list_jobs),
            web.get(_JOBS + "/{job_id}", self._show_job),
            web.post("/v3/auth/tokens", self._iam.issue_token),
            web.get("/v3/auth/projects", self._iam.auth_projects),
            web.get("/v3/projects", self._iam.projects),
            web.get("/_sim/changes", self._sim_changes),
            web.get("/_sim/jobs", self._sim_jobs),
            web.post("/_sim/step", self._sim_step),
            web.post("/_sim/faults", self._sim_faults),
            web.post("/_sim/expire-tokens", self._sim_expire_tokens),
        ]
        app.add_routes(routes)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on ``host:port`` (0 = any free port) and yield the base URL."""
        if not 0 <= port <= 65535:
            raise ConfigError(f"cannot serve on port {port}: a port is between 0 and 65535")
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
            # A tick that came late (a busy loop) must not pile up: owe at most one second.
            due = min(due + (now - last) * rate, max(rate, 1.0))
            last = now
            while due >= 1.0 and not stop.is_set():
                count = min(int(due), _WALK_CHUNK)
                self.step(count)
                due -= count
                await asyncio.sleep(0)  # let requests and signals through between chunks

    # --- DLI -----------------------------------------------------------------------------------

    async def _list_jobs(self, request: web.Request) -> web.Response:
        denied = await self._gateway.dli_gate(request, "list")
        if denied is not None:
            return denied
        project_id = request.match_info["project_id"]
        query = _list_query(request.query)
        total, jobs = self.fleet.query(project_id, query)
        now_ms = self._now_ms()
        rows = [
            render.detail_row(j) if query.show_detail else render.light_row(j, now_ms) for j in jobs
        ]
        payload = {
            "is_success": "true",
            "message": "",
            "job_list": {
                "total_count": total if self.config.total_count == "all" else len(rows),
                "jobs": rows,
            },
        }
        return self._gateway.ok(project_id, payload, "job_list")

    async def _show_job(self, request: web.Request) -> web.Response:
        denied = await self._gateway.dli_gate(request, "detail")
        if denied is not None:
            return denied
        project_id, raw_id = request.match_info["project_id"], request.match_info["job_id"]
        if not raw_id.isdigit():
            raise SimRejected(f"Invalid job_id: {raw_id}")
        job = self.fleet.get(project_id, int(raw_id))  # a missing job: 400 DLI.16001
        payload = {
            "is_success": "true",
            "message": "Job detail query succeeds.",
            "job_detail": render.detail(job),
        }
        return self._gateway.ok(project_id, payload, "job_detail")

    # --- ground truth and control over HTTP ------------------------------------------------------

    async def _sim_changes(self, request: web.Request) -> web.Response:
        since = _int(request.query.get("since", "0"), "since", 0, None)
        return json_response({"changes": [c.as_dict() for c in self.changes(since)]})

    async def _sim_jobs(self, request: web.Request) -> web.Response:
        project_id = request.query.get("project_id")
        if project_id is None:
            raise SimRejected("GET /_sim/jobs needs ?project_id=")
        return json_response({"jobs": self.jobs(project_id)})

    async def _sim_step(self, request: web.Request) -> web.Response:
        count = _int(request.query.get("changes", "1"), "changes", 0, MAX_STEP)
        return json_response({"changes": [c.as_dict() for c in self.step(count)]})

    async def _sim_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
            self.set_faults(body.pop("project_id", None), **body)
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            return json_response({"error": f"bad fault settings: {exc}"}, 400)
        except SimRejected as exc:
            return json_response({"error": exc.message}, exc.status)
        return json_response({"ok": True})

    async def _sim_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return json_response({"ok": True, "expired": self._gateway.token_count})


# --- list query parameters (reference §1.1) -----------------------------------------------------


def _int(raw: str, name: str, low: int, high: int | None) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SimRejected(f"Invalid parameter {name}: {raw!r}, must be {bound}")
    return value


def _choice(query: MultiMapping[str], name: str, options: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in options:
        raise SimRejected(f"Invalid parameter {name}: {value!r}")
    return value


def _tags(raw: str | None) -> tuple[tuple[str, str], ...]:
    """Terraform sends tags as ``k1=v1,k2=v2``; every pair must match."""
    if not raw:
        return ()
    pairs = [part.split("=", 1) for part in raw.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise SimRejected(f"Invalid parameter tags: {raw!r}")
    return tuple((k.strip(), v.strip()) for k, v in pairs)


def _list_query(query: MultiMapping[str]) -> ListQuery:
    name = query.get("name")
    if name is not None and len(name) > 57:
        raise SimRejected("Invalid parameter name: longer than 57 characters")
    root = query.get("root_job_id")
    return ListQuery(
        job_type=_choice(query, "job_type", JOB_TYPES),
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
        raise SimRejected(f"Invalid parameter {name}: {raw!r}")
    return raw.lower() == "true"
