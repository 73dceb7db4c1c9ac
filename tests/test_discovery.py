"""Project discovery keeps going: projects created or deleted while the bridge runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager

import orjson

from bridge.app import App
from bridge.settings import Settings
from bridge.simulator import Simulator
from bridge.sink import MemorySink
from tests.kafka_fixtures import eventually
from tests.sim_fixtures import MakeSimulator

PARTITIONS = 3


def discover_settings(base_url: str) -> Settings:
    return Settings.from_env(
        {
            "BRIDGE_API__ENDPOINT": base_url,
            "BRIDGE_API__IAM_ENDPOINT": base_url,
            "BRIDGE_AUTH__MODE": "none",
            "BRIDGE_PROJECTS__DISCOVER": "true",
            "BRIDGE_POLLING__INTERVAL_S": "0.2",
            "BRIDGE_POLLING__TRANSITIONAL_INTERVAL_S": "0.1",
            "BRIDGE_POLLING__RECONCILE_INTERVAL_S": "0.3",  # the discovery cadence too
            "BRIDGE_POLLING__JITTER_S": "0.01",
            "BRIDGE_POLLING__DRAIN_S": "2",
            "BRIDGE_KAFKA__PARTITIONS": str(PARTITIONS),
            "BRIDGE_HTTP__BIND": "127.0.0.1:0",
        }
    )


def projects_seen(sink: MemorySink) -> dict[str, set[str]]:
    """Project id -> the kinds of events published for its jobs."""
    seen: dict[str, set[str]] = {}
    for record in sink.records(sink.topics.events):
        project_id = record.key.decode().split("/")[0]
        assert record.value is not None
        kind = orjson.loads(record.value)["type"].removeprefix("dli.job.")
        seen.setdefault(project_id, set()).add(kind)
    return seen


@asynccontextmanager
async def running_bridge(base_url: str, sink: MemorySink) -> AsyncIterator[App]:
    stop = asyncio.Event()
    async with App(discover_settings(base_url), sink=sink) as app:
        task = asyncio.create_task(app.run(stop))
        try:
            yield app
        finally:
            stop.set()
            await task


async def test_a_project_created_later_is_polled_without_a_restart(
    make_simulator: MakeSimulator,
) -> None:
    sink = MemorySink(partitions=PARTITIONS)
    async with make_simulator(projects=2, jobs_per_project=3) as (sim, base_url):
        first = list(sim.project_ids)
        async with running_bridge(base_url, sink):

            async def first_ones_seen() -> bool:
                return set(first) <= set(projects_seen(sink))

            await eventually(first_ones_seen, timeout_s=15, what="the first projects' events")
            late = sim.add_project(jobs=2)

            async def late_one_seen() -> bool:
                return projects_seen(sink).get(late) == {"discovered"}

            await eventually(late_one_seen, timeout_s=15, what="the new project's events")
            # its jobs appeared with the project: discovered, like a first sweep's
            late_jobs = [
                r for r in sink.records(sink.topics.events) if r.key.startswith(late.encode())
            ]
            assert len(late_jobs) == 2


async def test_a_deleted_project_stops_being_polled_without_delete_events(
    make_simulator: MakeSimulator,
) -> None:
    sink = MemorySink(partitions=PARTITIONS)
    async with make_simulator(projects=2, jobs_per_project=3) as (sim, base_url):
        gone, kept = sim.project_ids
        async with running_bridge(base_url, sink):

            async def both_seen() -> bool:
                return {gone, kept} <= set(projects_seen(sink))

            await eventually(both_seen, timeout_s=15, what="both projects' events")
            sim.remove_project(gone)
            await asyncio.sleep(1.0)  # a few discovery rounds: the shard restarts without it
            calls = sim.requests[("list", gone)]
            await asyncio.sleep(1.0)
            assert sim.requests[("list", gone)] == calls, "still polling a deleted project"
            kept_calls = sim.requests[("list", kept)]
            await eventually(
                _more_calls(sim, kept, kept_calls), timeout_s=5, what="the kept project polled"
            )
        assert "deleted" not in projects_seen(sink)[gone]


def _more_calls(
    sim: Simulator, project_id: str, before: int
) -> Callable[[], Coroutine[None, None, bool]]:
    async def check() -> bool:
        return sim.requests[("list", project_id)] > before

    return check
