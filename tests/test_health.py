"""/healthz, /readyz and /metrics on an ephemeral port."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.errors import ConfigError
from bridge.health import HealthServer, Readiness, parse_bind
from bridge.metrics import Metrics


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_bind_reads_host_and_port(bind, expected):
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["9464", ":9464", "host:", "host:http", "host:70000"])
def test_parse_bind_refuses_what_is_not_host_port(bind):
    with pytest.raises(ConfigError, match=r"http\.bind"):
        parse_bind(bind)


async def test_endpoints_answer_health_readiness_and_metrics():
    metrics = Metrics()
    state = {"readiness": Readiness(False, "shards [3] not ready (sink_down)", {3: "sink_down"})}
    async with (
        HealthServer("127.0.0.1:0", metrics, lambda: state["readiness"]) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json()) == {"status": "ok"}
        async with http.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            body = await response.json()
        assert body == {
            "ready": False,
            "reason": "shards [3] not ready (sink_down)",
            "shards": {"3": "sink_down"},
        }
        state["readiness"] = Readiness(True, "", {3: "ready"})
        async with http.get(f"{server.url}/readyz") as response:
            assert response.status == 200
        metrics.polls.labels("list", "ok").inc()
        metrics.events.labels("created").inc(2)
        async with http.get(f"{server.url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    assert 'dli_bridge_polls_total{mode="list",outcome="ok"} 1.0' in text
    assert 'dli_bridge_events_total{type="created"} 2.0' in text
    assert "dli_bridge_change_to_commit_seconds_bucket" in text


async def test_two_registries_never_share_a_series():
    first, second = Metrics(), Metrics()
    first.rate_limited.inc()
    assert b"dli_bridge_rate_limited_total 1.0" in first.render()
    assert b"dli_bridge_rate_limited_total 0.0" in second.render()


async def test_a_taken_port_is_a_config_error():
    metrics = Metrics()
    async with HealthServer("127.0.0.1:0", metrics, lambda: Readiness(True)) as server:
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            async with HealthServer(f"127.0.0.1:{port}", metrics, lambda: Readiness(True)):
                pass
