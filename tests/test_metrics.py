"""The hand-counted API metrics read exactly as prometheus_client's own would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from bridge.metrics import _API_BUCKETS, Metrics


def _series(text: bytes) -> list[str]:
    """Sample lines, without comments and the client's ``_created`` timestamps."""
    lines = text.decode().splitlines()
    return sorted(
        line for line in lines if line and not line.startswith("#") and "_created" not in line
    )


def _api_lines(text: bytes) -> list[str]:
    return [line for line in _series(text) if line.startswith("dli_bridge_api_request")]


def test_api_calls_render_as_prometheus_counter_and_histogram_would():
    registry = CollectorRegistry()
    requests = Counter("dli_bridge_api_requests", "x", ["endpoint", "outcome"], registry=registry)
    seconds = Histogram(
        "dli_bridge_api_request_seconds", "x", ["endpoint"], buckets=_API_BUCKETS,
        registry=registry,
    )  # fmt: skip
    metrics = Metrics()
    rng = random.Random(5)
    observations = [*_API_BUCKETS, 0.0, 1e-9, 100.0]  # every bound itself: le is inclusive
    observations += [rng.choice([rng.uniform(0, 0.2), rng.expovariate(1.0)]) for _ in range(500)]
    for at, value in enumerate(observations):
        endpoint = ("detail", "list")[at % 2]
        outcome = ("ok", "not_found", "rate_limited")[at % 3]
        requests.labels(endpoint, outcome).inc()
        seconds.labels(endpoint).observe(value)
        metrics.api_calls.done(endpoint, outcome, value)
    assert _api_lines(metrics.render()) == _api_lines(generate_latest(registry))
    assert metrics.api_calls.count("detail", "ok") == sum(
        1 for at in range(len(observations)) if at % 2 == 0 and at % 3 == 0
    )


def test_no_call_yet_renders_no_api_series():
    assert _api_lines(Metrics().render()) == []
