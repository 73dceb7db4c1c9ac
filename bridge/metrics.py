"""Prometheus metrics of one App, in a registry of its own (never the process-global one)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ApiCalls", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# API calls are tens of milliseconds on a good day and seconds behind retries and throttling.
_API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Observation to commit: a poll interval is typically 5-60 s, a commit a few milliseconds.
_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every metric the bridge exports; ``render()`` is what ``/metrics`` answers.

    Tests build one per App, so two Apps in one process never share (or collide on) a series.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(
            "dli_bridge_polls", "Poll cycles of a project", ["mode", "outcome"], registry=r
        )
        self.api_calls = ApiCalls()
        r.register(self.api_calls)
        self.rate_limited = Counter(
            "dli_bridge_rate_limited", "Calls that ended throttled (429 / APIG.0308)", registry=r
        )
        self.events = Counter("dli_bridge_events", "Events committed", ["type"], registry=r)
        self.dead_letters = Counter(
            "dli_bridge_dead_letters", "Dead letters committed", ["reason"], registry=r
        )
        self.transactions = Counter(
            "dli_bridge_transactions", "Sink writes (one per batch)", ["outcome"], registry=r
        )
        self.change_to_commit = Histogram(
            "dli_bridge_change_to_commit_seconds",
            "Time from observing a change to its commit",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.jobs_tracked = Gauge("dli_bridge_jobs_tracked", "Jobs held in memory", registry=r)
        self.shards_owned = Gauge(
            "dli_bridge_shards_owned", "Shards this instance owns", registry=r
        )
        self.rebalances = Counter(
            "dli_bridge_rebalances", "Shard assignments received from the group", registry=r
        )
        self.fenced_producers = Counter(
            "dli_bridge_fenced_producers",
            "Shard producers fenced (or found stale) and stopped until a new assignment",
            registry=r,
        )
        self.restore_records = Gauge(
            "dli_bridge_restore_records",
            "State records the last open of a shard restored (0 when its state was kept)",
            ["shard"],
            registry=r,
        )
        self.restore_seconds = Gauge(
            "dli_bridge_restore_seconds",
            "How long the last open (fence, check, restore) of a shard took",
            ["shard"],
            registry=r,
        )
        self.last_sweep = Gauge(
            "dli_bridge_project_last_sweep_timestamp_seconds",
            "When the last complete list sweep of a project ended (epoch seconds)",
            ["project"],
            registry=r,
        )
        self.watermark = Gauge(
            "dli_bridge_project_watermark_timestamp_seconds",
            "The last watermark written for a project: observed through (epoch seconds)",
            ["project"],
            registry=r,
        )
        self.watermark_stalled_since = Gauge(
            "dli_bridge_project_watermark_stalled_since_timestamp_seconds",
            "Since when a project's watermark stopped advancing (epoch seconds; 0 = advancing)",
            ["project"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "dli_bridge_breaker_open",
            "1 while a project's circuit breaker is not closed",
            ["project"],
            registry=r,
        )

    def render(self) -> bytes:
        """The exposition text of every metric in this registry."""
        return generate_latest(self.registry)

    def __repr__(self) -> str:
        return f"<Metrics registry={id(self.registry):#x}>"


@dataclass(slots=True)
class _Durations:
    counts: list[int] = field(default_factory=lambda: [0] * (len(_API_BUCKETS) + 1))
    total_s: float = 0.0


class ApiCalls(Collector):
    """``dli_bridge_api_requests_total{endpoint,outcome}`` and the histogram
    ``dli_bridge_api_request_seconds{endpoint}``, counted in plain Python and read at scrape.

    Every detail call of every job lands here, so ``done`` is a dict update and a bisect;
    prometheus_client's Counter and Histogram take a lock per update (three a call). Only the
    event loop's thread may call ``done`` and render the registry (``/metrics`` is served
    there), so nothing needs a lock.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Durations] = {}

    def done(self, endpoint: str, outcome: str, seconds: float) -> None:
        key = (endpoint, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        durations = self._durations.get(endpoint)
        if durations is None:
            durations = self._durations[endpoint] = _Durations()
        durations.counts[bisect.bisect_left(_API_BUCKETS, seconds)] += 1  # le: first bound >= s
        durations.total_s += seconds

    def count(self, endpoint: str, outcome: str) -> int:
        return self._counts.get((endpoint, outcome), 0)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "dli_bridge_api_requests",
            "DLI calls as the engine saw them (after the client's own retries)",
            labels=["endpoint", "outcome"],
        )
        for (endpoint, outcome), n in sorted(self._counts.items()):
            requests.add_metric([endpoint, outcome], n)
        yield requests
        seconds = HistogramMetricFamily(
            "dli_bridge_api_request_seconds",
            "Duration of DLI calls, retries included",
            labels=["endpoint"],
        )
        for endpoint, durations in sorted(self._durations.items()):
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, _API_BUCKETS), "+Inf"], durations.counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric([endpoint], buckets, durations.total_s)
        yield seconds
