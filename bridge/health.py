"""The operating HTTP surface: /healthz (the loop answers), /readyz (shards restored), /metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import orjson
from aiohttp import web

from bridge.errors import ConfigError
from bridge.metrics import CONTENT_TYPE, Metrics

__all__ = ["HealthServer", "Readiness", "parse_bind"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the instance does its job right now, and if not, why (for /readyz)."""

    ready: bool
    reason: str = ""
    shards: Mapping[int, str] = field(default_factory=dict)  # shard -> its state's name

    def as_json(self) -> bytes:
        shards = {str(shard): state for shard, state in sorted(self.shards.items())}
        body = {"ready": self.ready, "reason": self.reason, "shards": shards}
        return orjson.dumps(body)


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; port 0 means any free port."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError("invalid configuration", [f"http.bind: {bind!r} is not host:port"])
    return host.strip("[]"), int(port)


class HealthServer:
    """Serves the three endpoints on ``bind`` while entered; ``url`` says where it listens.

    ``readiness`` is called on every /readyz request, so it must be cheap and never block.
    """

    def __init__(self, bind: str, metrics: Metrics, readiness: Callable[[], Readiness]) -> None:
        self._host, self._port = parse_bind(bind)
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __repr__(self) -> str:
        return f"<HealthServer {self.url or 'not serving'}>"

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics_page),
            ]
        )
        return app

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "invalid configuration",
                [f"http.bind: cannot listen on {self._host}:{self._port}: {exc.strerror}"],
            ) from exc
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}"
        log.info("health and metrics on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        # Answering at all is the proof: the handler runs on the same loop as every poll.
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        readiness = self._readiness()
        status = 200 if readiness.ready else 503
        return web.Response(
            body=readiness.as_json(), status=status, content_type="application/json"
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
