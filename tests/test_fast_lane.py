"""The fast lane for transitional jobs: a few quick detail polls, then the list sweep's pace."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bridge.lifecycle import JobStatus
from bridge.simulator import Simulator
from bridge.sweep import FAST_LANE_POLLS
from tests.test_scheduler import Engine, engine, polls, until


@asynccontextmanager
async def one_job(
    make_simulator: Any, status: JobStatus, *, transitional_interval_s: float
) -> AsyncIterator[tuple[Simulator, Engine, str, int]]:
    """One job in ``status``, watched in list mode (0.5 s sweeps) until it is discovered."""
    async with make_simulator(projects=1, jobs_per_project=1) as (sim, url):
        pid = sim.project_ids[0]
        job_id = next(iter(sim.fleet.projects[pid].jobs))
        sim.set_status(pid, job_id, status)
        async with engine(
            url, [pid], mode="list", interval_s=0.5, transitional_interval_s=transitional_interval_s
        ) as eng:
            await until(lambda: len(eng.events()) >= 1, "discovered")
            yield sim, eng, pid, job_id


async def move_to_submitting(sim: Simulator, eng: Engine, pid: str, job_id: int) -> None:
    """A move into a transitional status the bridge sees happen."""
    sim.set_status(pid, job_id, JobStatus.SUBMITTING)
    await until(lambda: len(eng.events()) >= 2, "the move to submitting")


async def test_a_job_stuck_in_a_transitional_status_leaves_the_fast_lane(make_simulator):
    """DLI jobs can sit in job_submitting for hours: polling each one every few seconds all
    that time was most of the list mode's requests in the benchmark."""
    watched = one_job(make_simulator, JobStatus.FINISH, transitional_interval_s=0.05)
    async with watched as (sim, eng, pid, job_id):
        await move_to_submitting(sim, eng, pid, job_id)
        seen_at = eng.requests(sim, "detail", pid)
        await asyncio.sleep(FAST_LANE_POLLS * 0.05 * 4)  # well past the fast lane
        before = eng.requests(sim, "detail", pid)
        await asyncio.sleep(1.0)  # two list sweeps, twenty fast-lane slots
        late = eng.requests(sim, "detail", pid) - before
        sim.set_status(pid, job_id, JobStatus.RUNNING)
        await until(lambda: len(eng.events()) >= 3, "the status change, seen by the sweep")
    assert before - seen_at >= 2  # the fast lane did poll it at first
    assert late <= 1  # afterwards at most a reconcile, not a poll every 50 ms
    statuses = [e["data"]["status_after"] for e in eng.events()]
    assert statuses == ["job_finish", "job_submitting", "job_running"]


async def test_a_job_found_in_a_transitional_status_gets_no_fast_lane(make_simulator):
    """At the first sweep nobody knows how long a job has been submitting: the fast lane is
    for moves the bridge saw happen (at 100k jobs, 8 % sit in such statuses)."""
    watched = one_job(make_simulator, JobStatus.SUBMITTING, transitional_interval_s=0.05)
    async with watched as (sim, eng, pid, _):
        before = eng.requests(sim, "detail", pid)
        cycles = polls(eng, "list", ("ok", "incomplete"))
        await asyncio.sleep(0.6)  # a sweep and a dozen fast-lane slots
        late = eng.requests(sim, "detail", pid) - before
        cycles = polls(eng, "list", ("ok", "incomplete")) - cycles
    assert before == 1  # the discovery's own detail call
    assert late == 0
    assert cycles <= 2  # the sweeps only: no empty fast-lane cycles every 50 ms in between


async def test_a_restored_job_gets_no_fast_lane_until_it_moves(make_simulator):
    """A shard taken over (rebalance, restart) must not fast-poll every transitional job
    again: the state record does not say when the job entered its status."""
    watched = one_job(make_simulator, JobStatus.FINISH, transitional_interval_s=0.2)
    async with watched as (sim, eng, pid, job_id):
        await move_to_submitting(sim, eng, pid, job_id)
        await eng.restore_shard(pid)
        before = eng.requests(sim, "detail", pid)
        await asyncio.sleep(0.6)  # inside the move's fast lane (6 x 0.2 s) had it carried over
        late = eng.requests(sim, "detail", pid) - before
    assert late == 0
