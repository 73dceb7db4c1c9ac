"""Detail mode counts a project's list instead of reading it, and reads it when a count lies."""

import asyncio
import random
from typing import Any

import orjson
import pytest

from bridge.client import DliClient
from bridge.errors import ApiUnavailable, JobNotFound
from tests.test_scheduler import Engine, engine, kinds, polls, until


def list_calls(sim: Any, pid: str) -> int:
    return int(sim.requests[("list", pid)])


async def cycles_and_lists(eng: Engine, sim: Any, pid: str, seconds: float) -> tuple[float, int]:
    """Complete detail cycles and list requests over ``seconds`` of a quiet project."""
    cycles, lists = polls(eng, "detail"), list_calls(sim, pid)
    await asyncio.sleep(seconds)
    return polls(eng, "detail") - cycles, list_calls(sim, pid) - lists


async def test_a_quiet_project_costs_one_list_request_a_cycle(make_simulator):
    """150 jobs take two list pages; a count that equals the known jobs takes one row."""
    async with make_simulator(projects=1, jobs_per_project=150) as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], mode="detail", interval_s=0.3) as eng:
            await until(lambda: len(eng.events()) >= 150, "discovered", timeout_s=20)
            cycles, lists = await cycles_and_lists(eng, sim, pid, 2.0)
            events = len(eng.events())
    assert cycles >= 4
    assert lists <= cycles + 1  # reading the list would be two requests a cycle
    assert events == 150


async def test_a_count_that_may_be_the_page_size_never_stands_in(make_simulator):
    """Where total_count counts the page, the count proves nothing: the list is read."""
    async with make_simulator(projects=1, jobs_per_project=150, total_count="page") as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], mode="detail", interval_s=0.3) as eng:
            await until(lambda: len(eng.events()) >= 150, "discovered", timeout_s=20)
            cycles, lists = await cycles_and_lists(eng, sim, pid, 2.0)
    assert cycles >= 4
    assert lists >= 3 * cycles - 3  # the count, then two pages


@pytest.mark.parametrize("total_count", ["all", "page"])
async def test_a_delete_and_a_create_between_two_counts_are_both_seen(make_simulator, total_count):
    """The count does not move, but the deleted job answers "no such job": the list is read
    in the same cycle, so the new job is created and the old one deleted, each once."""
    async with make_simulator(projects=1, jobs_per_project=5, total_count=total_count) as (
        sim,
        url,
    ):
        pid = sim.project_ids[0]
        gone = min(sim.fleet.projects[pid].jobs)
        async with engine(url, [pid], mode="detail", interval_s=0.3) as eng:
            await until(lambda: len(eng.events()) >= 5, "discovered")
            sim.delete_job(pid, gone)
            born = sim.create_job(pid)
            await until(lambda: len(eng.events()) >= 7, "deleted and created")
            await asyncio.sleep(0.6)
            gone_events, born_events = eng.of_job(pid, gone), eng.of_job(pid, born)
            tracked = eng.scheduler.jobs_tracked()
    assert kinds(gone_events) == ["discovered", "deleted"]
    assert kinds(born_events) == ["created"]
    assert tracked == 5


class Through:
    """The client, every call passed on; a subclass answers some of them otherwise."""

    def __init__(self, client: DliClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class RefusesTheGone(Through):
    """The client, but a job that is gone answers 200 with ``is_success`` false."""

    async def get_job_body(self, project_id: str, job_id: int) -> bytes:
        try:
            return await self._client.get_job_body(project_id, job_id)
        except JobNotFound:
            return orjson.dumps({"is_success": "false", "message": "job does not exist"})


async def test_a_refused_detail_puts_the_count_in_doubt(make_simulator):
    """A job gone, another come, and the gone one's detail is refused instead of "no such
    job": the count still matches, but a refusal proves nothing, so the list is read."""
    async with make_simulator(projects=1, jobs_per_project=5) as (sim, url):
        pid = sim.project_ids[0]
        gone = min(sim.fleet.projects[pid].jobs)
        async with engine(url, [pid], mode="detail", interval_s=0.3, wrap=RefusesTheGone) as eng:
            await until(lambda: len(eng.events()) >= 5, "discovered")
            sim.delete_job(pid, gone)
            born = sim.create_job(pid)
            await until(lambda: eng.of_job(pid, born), "the new job", timeout_s=5)
            gone_events = eng.of_job(pid, gone)
    assert kinds(eng.of_job(pid, born)) == ["created"]
    assert kinds(gone_events) == ["discovered"]  # never said gone: DLI never said so


class CountFails(Through):
    """The client, but every job count fails (after the client's own retries)."""

    async def count_jobs(self, project_id: str) -> int | None:
        raise ApiUnavailable("no answer within 30 s", project_id=project_id)


async def test_a_failed_count_fails_the_sweep_without_reading_the_list(make_simulator):
    """A failing API is not asked twice a cycle: the jobs are still fetched, the cycle is
    incomplete (no watermark), as when the list fails."""
    async with make_simulator(projects=1, jobs_per_project=5) as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], mode="detail", interval_s=0.2, wrap=CountFails) as eng:
            await until(lambda: len(eng.events()) >= 5, "discovered")
            await until(lambda: polls(eng, "detail", ("incomplete",)) >= 1, "a counted cycle")
            lists, details = list_calls(sim, pid), eng.requests(sim, "detail", pid)
            incomplete = polls(eng, "detail", ("incomplete",))
            await asyncio.sleep(1.0)
            lists_after, details_after = list_calls(sim, pid), eng.requests(sim, "detail", pid)
            incomplete_after = polls(eng, "detail", ("incomplete",))
    assert lists_after == lists
    assert details_after - details >= 15  # 5 jobs, a cycle every 0.2 s
    assert incomplete_after - incomplete >= 3


async def test_churn_at_a_constant_count_with_failing_calls_ends_in_the_truth(make_simulator):
    """Jobs replaced one for one while a tenth of the calls fail: every job that came is
    created once, every job that went is deleted once, and nothing else is said."""
    rng = random.Random(7)
    async with make_simulator(projects=1, jobs_per_project=20, error_rate=0.1, seed=3) as (
        sim,
        url,
    ):
        pid = sim.project_ids[0]
        api = {"retry_attempts": 1}
        async with engine(url, [pid], mode="detail", interval_s=0.2, api=api) as eng:
            await until(lambda: len(eng.events()) >= 20, "discovered")
            first = set(sim.fleet.projects[pid].jobs)
            gone: set[int] = set()
            born: set[int] = set()
            for _ in range(12):
                victim = rng.choice(sorted(set(sim.fleet.projects[pid].jobs)))
                sim.delete_job(pid, victim)
                (born if victim in born else gone).add(victim)
                born.add(sim.create_job(pid))
                await asyncio.sleep(0.15)
            alive = set(sim.fleet.projects[pid].jobs)

            def said() -> dict[int, list[str]]:
                by_job: dict[int, list[str]] = {}
                for event in eng.events(pid):
                    by_job.setdefault(event["data"]["job_id"], []).append(event["data"]["kind"])
                return by_job

            def settled() -> bool:
                ends = {j: k[-1] for j, k in said().items()}
                return {j for j, k in ends.items() if k != "deleted"} == alive

            await until(settled, "the events agree with the simulator", timeout_s=20)
            by_job = said()
    assert len(alive) == 20
    assert gone
    for job_id in first:
        assert by_job[job_id][0] == "discovered"
    for job_id in born & alive:
        assert by_job[job_id][0] == "created"
    for job_id in born - alive:  # some went before a cycle saw them: never said at all
        assert by_job.get(job_id, ["created"])[0] == "created"
    for job_id, said_kinds in by_job.items():
        assert said_kinds.count("deleted") == (job_id not in alive)
        assert "deleted" not in said_kinds[:-1]
