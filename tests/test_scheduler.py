"""The scheduler against the simulator and a MemorySink: events, sequences, modes, failures."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from bridge.auth import NoAuth
from bridge.client import DliClient, new_session
from bridge.errors import SinkUnavailable
from bridge.lifecycle import TRANSITIONAL, JobStatus
from bridge.metrics import Metrics
from bridge.redact import is_mask
from bridge.scheduler import PollConfig, Scheduler, ticks
from bridge.settings import ApiSettings
from bridge.sharding import shard_of
from bridge.simulator import Simulator
from bridge.sink import MemorySink
from bridge.tracking import fingerprint
from tests.kafka_fixtures import eventually

PARTITIONS = 4
FAST_API = {
    "retry_base_s": 0.01,
    "retry_cap_s": 0.05,
    "retry_after_cap_s": 0.2,
    "project_rate_per_s": 1000.0,
    "project_burst": 1000,
    "credential_rate_per_s": 1000.0,
    "credential_burst": 1000,
    "breaker_cooldown_s": 0.5,
}


@dataclass
class Engine:
    scheduler: Scheduler
    sink: MemorySink
    metrics: Metrics
    client: DliClient

    def events(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """Every event written so far (per-job order kept), as CloudEvent dicts."""
        found = []
        for record in self.sink.records(self.sink.topics.events):
            assert record.value is not None
            event = orjson.loads(record.value)
            if project_id is None or event["data"]["project_id"] == project_id:
                found.append(event)
        return found

    def of_job(self, project_id: str, job_id: int) -> list[dict[str, Any]]:
        return [e for e in self.events(project_id) if e["data"]["job_id"] == job_id]

    def dead_letters(self) -> list[dict[str, Any]]:
        records = self.sink.records(self.sink.topics.dlq)
        return [orjson.loads(r.value) for r in records if r.value is not None]

    async def restore_shard(self, project_id: str) -> None:
        """Stop the project's shard and start it again, restored from the state topic."""
        shard = shard_of(project_id, PARTITIONS)
        await self.scheduler.stop_shard(shard)
        self.scheduler.start_shard(shard, generation=1)
        await until(lambda: self.scheduler.shard_status().get(shard) == "ready", "restored")

    def requests(self, sim: Simulator, route: str, project_id: str | None = None) -> int:
        return sum(
            n
            for (r, p), n in sim.requests.items()
            if r == route and (project_id is None or p == project_id)
        )


@asynccontextmanager
async def engine(
    base_url: str,
    projects: list[str],
    *,
    sink: MemorySink | None = None,
    api: dict[str, Any] | None = None,
    wrap: Callable[[DliClient], Any] | None = None,
    **poll: Any,
) -> AsyncIterator[Engine]:
    """A running scheduler over ``projects`` owning every shard; stopped on exit. ``wrap``
    puts something between the scheduler and the client (to make DLI answer otherwise)."""
    sink = sink or MemorySink(partitions=PARTITIONS)
    settings = ApiSettings(endpoint=base_url, **{**FAST_API, **(api or {})})
    poll = {"interval_s": 0.2, "jitter_s": 0.0, "transitional_interval_s": 0.1, **poll}
    config = PollConfig(partitions=PARTITIONS, **poll)
    async with new_session() as session, DliClient(settings, NoAuth(), session=session) as client:
        metrics = Metrics()
        job_api = client if wrap is None else wrap(client)
        scheduler = Scheduler(job_api, sink, config, metrics, projects, rng=random.Random(1))
        async with asyncio.TaskGroup() as group:
            running = group.create_task(scheduler.run(range(PARTITIONS)))
            try:
                yield Engine(scheduler, sink, metrics, client)
            finally:
                scheduler.stop()  # then drain for a moment, as the App does
                done, _ = await asyncio.wait({running}, timeout=2.0)
                if not done:
                    running.cancel()


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["kind"] for e in events]


async def until(check: Any, what: str, timeout_s: float = 10.0) -> None:
    async def probe() -> bool:
        return bool(check())

    await eventually(probe, timeout_s=timeout_s, what=what)


# --- pure helpers -----------------------------------------------------------------------------


def test_a_fresh_process_restores_when_the_bridge_first_looked_and_discovers_by_it():
    """In a new process (no project state yet) the earliest restored observation is when the
    bridge first looked: a job first seen now that DLI created before it was there all along
    (a first sweep cut short between its transactions); one created after is created."""
    from datetime import UTC, datetime

    from bridge import events
    from bridge.tracking import ProjectState, restore

    def value(job_id: int, at: datetime) -> events.StateValue:
        snapshot = orjson.dumps({"job_id": job_id, "status": "job_running"})
        return events.StateValue("p-1", job_id, 1, snapshot, b"f" * 16, None, at)

    first = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    later = datetime(2026, 11, 25, 12, 5, tzinfo=UTC)
    restored = {b"p-1/2": value(2, later), b"p-1/1": value(1, first)}
    projects, ignored = restore({"p-1": ProjectState("p-1")}, restored)
    project = projects["p-1"]
    looked_ms = int(first.timestamp() * 1000)
    assert (ignored, project.discovering, project.swept_from) == (0, False, first.timestamp())
    assert project.discovers(3, looked_ms - 60_000)
    assert not project.discovers(3, looked_ms + 60_000)
    assert not project.discovers(3, None)  # no create_time: created, as before
    assert not project.discovers(3, True)  # nor a JSON true where a number belongs


def test_fingerprint_is_16_bytes_and_tells_bodies_apart():
    assert len(fingerprint(b"{}")) == 16
    assert fingerprint(b'{"a":1}') != fingerprint(b'{"a":2}')


@pytest.mark.parametrize(
    ("seed", "on"), [(None, True), ("random", True), ("0", False), ("7", False)]
)
def test_the_quick_hash_is_off_when_the_hash_key_is_pinned(seed, on):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    code = "from bridge import sweep; print(sweep.QUICK_HASH, sweep.quick_hash(b'x') != 0)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [str(on), str(on)], out.stderr


async def test_ticks_do_not_drift_when_work_is_slow():
    """A tick that overran is skipped, and the next lands on the original grid."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    seen: list[float] = []
    async for nominal in ticks(0.05, 0.0, stop, random.Random(0)):
        seen.append(nominal)
        if len(seen) == 2:
            await asyncio.sleep(0.12)  # overruns two ticks
        if len(seen) == 4:
            break
    steps = [round((b - a) / 0.05) for a, b in itertools.pairwise(seen)]
    assert steps[0] == 1
    assert steps[1] >= 3  # skipped, not bunched
    assert all(abs((t - seen[0]) / 0.05 - round((t - seen[0]) / 0.05)) < 1e-6 for t in seen)
    assert loop.time() >= seen[-1]


async def test_ticks_keep_one_random_offset_so_the_gap_is_the_period():
    """The jitter places a loop once; it never stretches the gap between two polls."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    woke: list[float] = []
    nominal: list[float] = []
    async for tick in ticks(0.05, 0.04, stop, random.Random(3), phase_s=0.01):
        woke.append(loop.time())
        nominal.append(tick)
        if len(woke) == 6:
            break
    later = nominal[1:]
    assert all(abs((b - a) - 0.05) < 1e-9 for a, b in itertools.pairwise(later))
    offset = later[0] - nominal[0] - 0.01 - 0.05
    assert 0.0 <= offset <= 0.04
    assert woke[0] - nominal[0] >= offset - 1e-3  # the first tick waited its offset too
    assert all(w >= t for w, t in zip(woke[1:], later, strict=True))


async def test_ticks_end_when_stopped():
    stop = asyncio.Event()
    got = []
    async for nominal in ticks(10.0, 0.0, stop, random.Random(0)):
        got.append(nominal)
        stop.set()
    assert len(got) == 1


def test_poll_config_from_settings_adds_sweep_only_fields():
    from bridge.settings import Settings

    env = {"BRIDGE_AUTH__MODE": "none", "BRIDGE_PROJECTS__IDS": '["p-1"]'}
    sweep = Settings.from_env({**env, "BRIDGE_POLLING__MODE": "sweep"})
    listing = Settings.from_env(env)
    assert {"user_name", "root_id", "duration"} <= set(PollConfig.from_settings(sweep).ignore)
    assert PollConfig.from_settings(listing).ignore == ("duration",)
    assert PollConfig.from_settings(listing, partitions=3).partitions == 3


# --- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_first_sweep_discovers_every_job_once(make_simulator, mode):
    async with (
        make_simulator(projects=2, jobs_per_project=5) as (sim, url),
        engine(url, sim.project_ids, mode=mode) as eng,
    ):
        await until(lambda: len(eng.events()) >= 10, "10 discovered events")
        await asyncio.sleep(0.5)  # a few more cycles: nothing new
        events = eng.events()
    assert kinds(events) == ["discovered"] * 10
    assert {e["data"]["sequence"] for e in events} == {1}
    assert len({e["id"] for e in events}) == 10
    assert {(e["data"]["project_id"], e["data"]["job_id"]) for e in events} == {
        (p, j) for p in sim.project_ids for j in sim.fleet.projects[p].jobs
    }


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_changes_arrive_with_their_kind_and_the_next_sequence(make_simulator, mode):
    async with make_simulator(projects=1, jobs_per_project=3) as (sim, url):
        pid = sim.project_ids[0]
        first, second, third = sorted(sim.fleet.projects[pid].jobs)
        async with engine(url, [pid], mode=mode, delete_after_misses=2) as eng:
            await until(lambda: len(eng.events()) >= 3, "discovered")
            job = sim.job(pid, first)
            target = next(
                s for s in (JobStatus.RUNNING, JobStatus.SUBMITTING) if s != job["status"]
            )
            sim.set_status(pid, first, target)
            sim.update_job(pid, second, desc="reconfigured by hand")
            created = sim.create_job(pid)
            sim.delete_job(pid, third)
            await until(lambda: len(eng.events()) >= 7, "four more events")
            await asyncio.sleep(0.4)
            events = eng.events()
            jobs_tracked = eng.scheduler.jobs_tracked()
    by_job = {j: [e for e in events if e["data"]["job_id"] == j] for j in (first, second, third)}
    assert kinds(by_job[first]) == ["discovered", "status_changed"]
    assert by_job[first][1]["data"]["status_after"] == target
    assert kinds(by_job[second]) == ["discovered", "updated"]
    assert "/desc" in by_job[second][1]["data"]["changed"]
    assert kinds(by_job[third]) == ["discovered", "deleted"]
    for job_events in by_job.values():
        assert [e["data"]["sequence"] for e in job_events] == [1, 2]
    created_events = [e for e in events if e["data"]["job_id"] == created]
    assert kinds(created_events) == ["created"]
    assert created_events[0]["data"]["sequence"] == 1
    assert jobs_tracked == 3  # first, second, created
    assert len({e["id"] for e in events}) == len(events)


async def test_delete_waits_for_misses_and_writes_a_tombstone(make_simulator):
    async with make_simulator(projects=1, jobs_per_project=2) as (sim, url):
        pid = sim.project_ids[0]
        gone = min(sim.fleet.projects[pid].jobs)
        async with engine(url, [pid], delete_after_misses=3) as eng:
            await until(lambda: len(eng.events()) >= 2, "discovered")
            sim.delete_job(pid, gone)
            await until(lambda: len(eng.events()) >= 3, "deleted")
            detail_checks = eng.requests(sim, "detail", pid)
    assert kinds(eng.of_job(pid, gone)) == ["discovered", "deleted"]
    state = [
        r for r in eng.sink.records(eng.sink.topics.state) if r.key == f"{pid}/{gone}".encode()
    ]
    assert state[-1].value is None
    assert detail_checks >= 1


# --- requests per mode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expect_detail"),
    [("list", "few"), ("detail", "every"), ("sweep", "none")],
)
async def test_detail_calls_per_mode(make_simulator, mode, expect_detail):
    """list: only new jobs; detail: every job every interval; sweep: none while nothing goes."""
    async with make_simulator(projects=1, jobs_per_project=10) as (sim, url):
        pid = sim.project_ids[0]
        # no job in a transitional state, so no faster polls blur the counts
        for job_id, job in sim.fleet.projects[pid].jobs.items():
            if job.status.value in {
                s.value
                for s in (
                    JobStatus.SUBMITTING,
                    JobStatus.CANCELING,
                    JobStatus.SAVEPOINTING,
                    JobStatus.DOWNLOADING,
                    JobStatus.ARREARAGE_RECOVERING,
                )
            }:
                sim.set_status(pid, job_id, JobStatus.RUNNING)
        async with engine(url, [pid], mode=mode, interval_s=0.2) as eng:
            await until(lambda: len(eng.events()) >= 10, "discovered")
            before = eng.requests(sim, "detail", pid)
            lists_before = eng.requests(sim, "list", pid)
            await asyncio.sleep(1.0)
            details = eng.requests(sim, "detail", pid) - before
            sweeps = eng.requests(sim, "list", pid) - lists_before
    assert sweeps >= 3
    if expect_detail == "every":
        assert details >= 10 * (sweeps - 1)
        assert before >= 10
    elif expect_detail == "few":
        assert before == 10  # one per new job
        assert details == 0  # rows unchanged, reconcile not due
    else:
        assert before == 0
        assert details == 0


def _settle_transitional(sim: Simulator, pid: str) -> None:
    """No job in a transitional state, so no fast-lane polls blur request counts."""
    for job_id, job in sim.fleet.projects[pid].jobs.items():
        if job.status.value in TRANSITIONAL:
            sim.set_status(pid, job_id, JobStatus.RUNNING)


async def test_list_mode_reconciles_with_detail_rows_not_a_call_per_job(make_simulator):
    """A reconcile lists show_detail rows: unchanged jobs cost no detail call, and a config
    edit the light row does not show is still found (one detail call, for that job)."""
    async with make_simulator(projects=1, jobs_per_project=10) as (sim, url):
        pid = sim.project_ids[0]
        _settle_transitional(sim, pid)
        async with engine(url, [pid], interval_s=0.1, reconcile_interval_s=0.3) as eng:
            await until(lambda: len(eng.events()) >= 10, "discovered")
            before = eng.requests(sim, "detail", pid)
            await asyncio.sleep(1.0)  # three reconciles or more
            idle_details = eng.requests(sim, "detail", pid) - before
            job_id = max(sim.fleet.projects[pid].jobs)
            cu = sim.fleet.get(pid, job_id).cu_number
            sim.update_job(pid, job_id, job_config={"cu_number": cu + 1})  # not in a light row
            await until(lambda: len(eng.of_job(pid, job_id)) >= 2, "the edit, found")
            edit_details = eng.requests(sim, "detail", pid) - before - idle_details
            updated = eng.of_job(pid, job_id)[-1]["data"]
    assert idle_details == 0  # three sweeps of ten jobs: 30 calls if reconcile fetched each
    assert updated["kind"] == "updated"
    assert "/job_config/cu_number" in updated["changed"]
    assert 1 <= edit_details <= 2


async def test_a_restored_shard_reconciles_without_a_detail_call_per_job(make_simulator):
    """Restored jobs have no detail fingerprint: their first reconcile compares the row with
    the remembered snapshot instead of fetching every job again (a rebalance's cost)."""
    async with make_simulator(projects=1, jobs_per_project=10) as (sim, url):
        pid = sim.project_ids[0]
        _settle_transitional(sim, pid)
        async with engine(url, [pid], interval_s=0.1, reconcile_interval_s=0.3) as eng:
            await until(lambda: len(eng.events()) >= 10, "discovered")
            await eng.restore_shard(pid)
            before = eng.requests(sim, "detail", pid)
            await asyncio.sleep(1.0)  # three reconciles or more
            idle_details = eng.requests(sim, "detail", pid) - before
            job_id = max(sim.fleet.projects[pid].jobs)
            sim.update_job(pid, job_id, desc="edited after the restore")
            await until(lambda: len(eng.of_job(pid, job_id)) >= 2, "the edit, found")
    assert idle_details == 0
    assert "/desc" in eng.of_job(pid, job_id)[-1]["data"]["changed"]


async def test_unchanged_detail_bodies_are_not_parsed(make_simulator, monkeypatch):
    from bridge.client import parse_job_body as real

    calls = Counter[str]()

    def counting(body: bytes, **kwargs: Any) -> Any:
        calls["parse"] += 1
        return real(body, **kwargs)

    monkeypatch.setattr("bridge.scheduler.parse_job_body", counting)
    async with make_simulator(projects=1, jobs_per_project=4) as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], mode="detail") as eng:
            await until(lambda: len(eng.events()) >= 4, "discovered")
            parsed = calls["parse"]
            await until(lambda: eng.requests(sim, "detail", pid) >= 16, "more detail polls")
    assert parsed == 4
    assert calls["parse"] <= 4 + 1  # a body may change once (a job in a transitional walk)


@pytest.mark.parametrize("quick", [True, False])
async def test_a_body_seen_before_is_not_even_fingerprinted(make_simulator, monkeypatch, quick):
    """The keyed BLAKE2b runs once per new body; after that the body's hash() recognises it.
    With the process's hash key pinned (PYTHONHASHSEED) every poll fingerprints again."""
    from bridge import sweep
    from bridge.tracking import fingerprint as real

    calls = Counter[str]()

    def counting(data: bytes, key: bytes = b"") -> bytes:
        calls["fingerprint"] += 1
        return real(data, key)

    monkeypatch.setattr("bridge.scheduler.fingerprint", counting)
    monkeypatch.setattr(sweep, "QUICK_HASH", quick)
    async with make_simulator(projects=1, jobs_per_project=4) as (sim, url):
        pid = sim.project_ids[0]
        _settle_transitional(sim, pid)
        async with engine(url, [pid], mode="detail") as eng:
            await until(lambda: len(eng.events()) >= 4, "discovered")
            await until(lambda: eng.requests(sim, "detail", pid) >= 12, "two more polls each")
            before = (calls["fingerprint"], eng.requests(sim, "detail", pid))
            await until(lambda: eng.requests(sim, "detail", pid) >= before[1] + 12, "more polls")
            job_id = max(sim.fleet.projects[pid].jobs)
            sim.update_job(pid, job_id, desc="edited")
            await until(lambda: "updated" in kinds(eng.of_job(pid, job_id)), "the edit")
            after = (calls["fingerprint"], eng.requests(sim, "detail", pid))
    polls, fingerprinted = after[1] - before[1], after[0] - before[0]
    if quick:  # the edit's body, then its first poll after the commit (the state is new)
        assert fingerprinted <= 2
    else:
        assert fingerprinted >= polls - 1


# --- writes within a cycle --------------------------------------------------------------------


class HoldLast:
    """Between the scheduler and the client: once ``first``'s detail call has shown ``mark``,
    the call for ``last`` waits for ``release``, so its cycle cannot end."""

    def __init__(self, client: DliClient, first: int, last: int, mark: bytes) -> None:
        self._client, self.first, self.last, self.mark = client, first, last, mark
        self.armed = asyncio.Event()
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_job_body(self, project_id: str, job_id: int) -> bytes:
        if job_id == self.last and self.armed.is_set() and not self.release.is_set():
            self.held.set()
            await self.release.wait()
        body: bytes = await self._client.get_job_body(project_id, job_id)
        if job_id == self.first and self.mark in body:
            self.armed.set()
        return body


@asynccontextmanager
async def held_cycle(
    make_simulator: Any, mark: str, sink: MemorySink | None = None, *, discovered: bool = True
) -> AsyncIterator[tuple[Simulator, str, Engine, HoldLast, int]]:
    """Detail mode, one call at a time in job order: the cycle that finds ``first`` edited
    (desc ``mark``; "" for any answer) then waits on its last job's call until the test
    releases it. With ``discovered`` the first sweep is committed before it yields."""
    async with make_simulator(projects=1, jobs_per_project=4) as (sim, url):
        pid = sim.project_ids[0]
        first, *_, last = sorted(sim.fleet.projects[pid].jobs)
        holds: list[HoldLast] = []

        def wrap(client: DliClient) -> HoldLast:
            holds.append(HoldLast(client, first, last, mark.encode()))
            return holds[0]

        async with engine(
            url,
            [pid],
            sink=sink,
            wrap=wrap,
            mode="detail",
            flush_after_s=0.0,
            per_project_in_flight=1,  # one call at a time: first is asked before last
        ) as eng:
            try:
                if discovered:
                    await until(lambda: len(eng.events()) >= 4, "discovered")
                yield sim, pid, eng, holds[0], first
            finally:
                holds[0].release.set()


async def test_a_change_is_written_while_its_cycle_still_waits_for_other_jobs(make_simulator):
    """A big project's cycle lasts as long as its detail calls: what an early call found is
    written without waiting for the last one, and the watermark still waits for the last."""
    mark = "edited while the cycle waits"
    async with held_cycle(make_simulator, mark) as (sim, pid, eng, hold, first):
        sim.update_job(pid, first, desc=mark)
        await until(hold.held.is_set, "the cycle that found it waits on its last job")
        marks = len(_watermarks(eng, pid))  # the earlier cycles' (only this cycle writes now)
        await until(lambda: len(eng.of_job(pid, first)) >= 2, "the edit, mid-cycle", 3.0)
        held_marks = len(_watermarks(eng, pid))
        hold.release.set()
        await until(lambda: len(_watermarks(eng, pid)) > held_marks, "the cycle's watermark")
        await asyncio.sleep(0.5)  # more cycles: nothing is written twice
        events = eng.of_job(pid, first)
    assert held_marks == marks  # the watermark is the cycle's last write
    assert kinds(events) == ["discovered", "updated"]
    assert [e["data"]["sequence"] for e in events] == [1, 2]


async def test_a_first_sweep_is_written_whole_at_its_end(make_simulator):
    """A shard restored with part of a first sweep would take the rest for new jobs
    ("created", fast-polled): nothing of a discovery is written before its last call."""
    async with held_cycle(make_simulator, "", discovered=False) as (_, _, eng, hold, _):
        await until(hold.held.is_set, "the first sweep waits on its last job")
        await asyncio.sleep(0.3)  # long past flush_after_s
        while_held = eng.events()
        hold.release.set()
        await until(lambda: len(eng.events()) >= 4, "discovered")
        events = eng.events()
    assert while_held == []
    assert kinds(events) == ["discovered"] * 4


async def test_a_shard_restored_from_part_of_a_first_sweep_still_discovers_the_rest(
    make_simulator, monkeypatch
):
    """A first sweep goes out in transactions of at most MAX_BATCH_JOBS jobs; a process
    killed between them leaves a state topic with part of the sweep. The restored shard is
    no longer discovering, yet the jobs it did not restore were there all along: discovered
    (no fast lane), by their create_time. A job created after the restore is created."""
    monkeypatch.setattr("bridge.writes.MAX_BATCH_JOBS", 2)
    sink = MemorySink(partitions=PARTITIONS)
    real_write = sink._write
    broken: list[bool] = []  # after the first batch: every write fails until the "restart"
    failed = asyncio.Event()

    async def first_batch_only(shard: int, epoch: int, batch: Any) -> None:
        if broken and broken[0]:
            failed.set()
            raise SinkUnavailable("killed between the sweep's transactions")
        await real_write(shard, epoch, batch)
        if batch.events:
            broken.append(True)

    sink._write = first_batch_only  # type: ignore[method-assign]
    async with make_simulator(projects=1, jobs_per_project=4) as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], sink=sink) as eng:
            await asyncio.wait_for(failed.wait(), 10.0)
            written = eng.events()
            shard = shard_of(pid, PARTITIONS)
            await eng.scheduler.stop_shard(shard)
            broken[0] = False
            eng.scheduler.start_shard(shard, generation=1)
            await until(lambda: len(eng.events()) >= 4, "the rest of the sweep")
            new_job = sim.create_job(pid)
            await until(lambda: len(eng.of_job(pid, new_job)) >= 1, "the new job")
            events = eng.events()
    assert len(written) == 2
    by_job = {e["data"]["job_id"]: e["data"]["kind"] for e in events}
    assert by_job == {
        **dict.fromkeys(sim.fleet.projects[pid].jobs, "discovered"),
        new_job: "created",
    }
    assert len(events) == 5


async def test_a_failed_write_mid_cycle_loses_nothing_and_claims_nothing(make_simulator):
    """The write of an early change fails while the cycle still waits on its last call: the
    cycle writes no watermark, and after recovery the change is written once."""
    import time
    from datetime import datetime

    mark = "edited before the sink broke"
    sink = MemorySink(partitions=PARTITIONS)
    real_write = sink._write
    writes: list[Any] = []  # the batches that were written, in order
    breaking: list[bool] = []

    async def write(shard: int, epoch: int, batch: Any) -> None:
        if batch.events and breaking and not breaking[0]:
            breaking[0] = True
            raise SinkUnavailable("broker gone mid-cycle")
        await real_write(shard, epoch, batch)
        writes.append(batch)

    sink._write = write  # type: ignore[method-assign]
    async with held_cycle(make_simulator, mark, sink) as (sim, pid, eng, hold, first):
        edited_at = time.time()
        breaking.append(False)
        sim.update_job(pid, first, desc=mark)
        await until(hold.held.is_set, "the cycle that found it waits on its last job")
        await until(lambda: breaking[0], "the mid-cycle write, failed")
        hold.release.set()
        await until(lambda: len(eng.of_job(pid, first)) >= 2, "the edit, after recovery")
        await asyncio.sleep(0.5)
        events = eng.of_job(pid, first)
    assert kinds(events) == ["discovered", "updated"]
    assert [e["data"]["sequence"] for e in events] == [1, 2]
    edit = next(i for i, b in enumerate(writes) if _updates(b, first))
    claimed = [
        datetime.fromisoformat(orjson.loads(r.value)["observed_through"]).timestamp()
        for b in writes[:edit]
        for r in b.watermarks
    ]
    assert all(t < edited_at for t in claimed)  # no watermark vouched for it before it was written


def _updates(batch: Any, job_id: int) -> bool:
    found = (orjson.loads(r.value)["data"] for r in batch.events if r.value is not None)
    return any(d["job_id"] == job_id and d["kind"] == "updated" for d in found)


# --- bad answers and failures -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["detail", "sweep"])
async def test_malformed_bodies_become_one_dead_letter_each_and_state_stays(make_simulator, mode):
    """In sweep mode the broken thing is one row of a page: that job is dead-lettered, the
    page's other jobs go on."""
    async with make_simulator(projects=1, jobs_per_project=3) as (sim, url):
        pid = sim.project_ids[0]
        job_id, other = sorted(sim.fleet.projects[pid].jobs)[:2]
        async with engine(url, [pid], mode=mode) as eng:
            await until(lambda: len(eng.events()) >= 3, "discovered")
            # every view of this job now fails validation, the same way each time
            sim.update_job(pid, job_id, desc="new", job_config={"smn_topic": ["not", "text"]})
            await asyncio.sleep(1.0)
            sim.update_job(pid, other, desc="still watched")
            await until(lambda: len(eng.of_job(pid, other)) >= 2, "the other job's update")
            dead = eng.dead_letters()
            events = eng.of_job(pid, job_id)
    assert len(dead) == 1, dead
    assert dead[0]["job_id"] == job_id
    assert kinds(events) == ["discovered"]  # state did not move past the broken body
    dead_metric = eng.metrics.dead_letters
    assert dead_metric.labels("invalid")._value.get() == 1  # what happened, not "malformed"
    assert dead_metric.labels("malformed")._value.get() == 0


async def test_random_malformed_answers_lose_no_healthy_event(make_simulator):
    async with (
        make_simulator(projects=2, jobs_per_project=5, malformed_rate=0.3) as (sim, url),
        engine(url, sim.project_ids, mode="detail") as eng,
    ):
        await until(lambda: len(eng.events()) >= 10, "every job discovered", 15.0)
        await asyncio.sleep(0.5)
        dead = eng.dead_letters()
        events = eng.events()
    assert sorted(kinds(events)) == ["discovered"] * 10
    assert dead
    # a truncated JSON body is masked whole (redaction): equal masks may stand for two bodies
    keys = Counter((d["job_id"], d["body"]) for d in dead if not is_mask(d["body"]))
    assert all(n == 1 for n in keys.values()), keys


async def test_sink_failure_republishes_the_same_ids_after_recovery(make_simulator):
    async with make_simulator(projects=1, jobs_per_project=2) as (sim, url):
        pid = sim.project_ids[0]
        job_id = min(sim.fleet.projects[pid].jobs)
        sink = MemorySink(partitions=PARTITIONS)
        async with engine(url, [pid], sink=sink) as eng:
            await until(lambda: len(eng.events()) >= 2, "discovered")
            sink.fail_next(3, SinkUnavailable("broker gone"))
            sim.update_job(pid, job_id, desc="during the outage")
            await until(lambda: len(eng.events()) >= 3, "the update after recovery")
            await asyncio.sleep(0.4)
            events = eng.of_job(pid, job_id)
            failed = eng.metrics.transactions.labels("failed")._value.get()
    assert kinds(events) == ["discovered", "updated"]
    assert [e["data"]["sequence"] for e in events] == [1, 2]
    assert failed >= 3


async def test_a_write_that_committed_but_failed_is_not_duplicated(make_simulator):
    """The sink wrote, then raised: the reopened shard's restored state knows it."""
    async with make_simulator(projects=1, jobs_per_project=2) as (sim, url):
        pid = sim.project_ids[0]
        job_id = min(sim.fleet.projects[pid].jobs)
        sink = MemorySink(partitions=PARTITIONS)
        real_write = sink._write
        broke: list[bool] = []

        async def write_then_fail(shard: int, epoch: int, batch: Any) -> None:
            await real_write(shard, epoch, batch)
            if batch.events and not broke:
                broke.append(True)
                raise SinkUnavailable("commit answer lost")

        sink._write = write_then_fail  # type: ignore[method-assign]
        async with engine(url, [pid], sink=sink) as eng:
            await until(lambda: len(eng.events()) >= 2, "discovered")
            sim.update_job(pid, job_id, desc="once")
            await until(lambda: len(eng.of_job(pid, job_id)) >= 2, "update")
            await asyncio.sleep(0.6)
            events = eng.events()
    assert len({e["id"] for e in events}) == len(events)
    assert kinds(events).count("discovered") == 2


async def test_throttled_project_does_not_delay_another(make_simulator):
    async with make_simulator(projects=2, jobs_per_project=4) as (sim, url):
        slow, fast = sim.project_ids
        sim.set_faults(slow, throttle_per_s=0.001)
        api = {"retry_attempts": 50, "retry_after_cap_s": 2.0, "max_in_flight": 4}
        async with engine(url, [slow, fast], api=api, mode="detail") as eng:
            await until(lambda: len(eng.events(fast)) >= 4, "fast project discovered", 5.0)
            job_id = min(sim.fleet.projects[fast].jobs)
            sim.update_job(fast, job_id, desc="while the other is throttled")
            loop = asyncio.get_running_loop()
            started = loop.time()
            await until(lambda: len(eng.of_job(fast, job_id)) >= 2, "fast update", 5.0)
            took = loop.time() - started
            slow_events = eng.events(slow)
    assert took < 0.2 + 0.5  # one interval plus slack
    assert slow_events == []


async def test_a_shard_stopped_and_started_again_resumes_from_its_state(make_simulator):
    """What membership does on a rebalance: the shard's loops end, it closes, and a later
    start restores what was committed: no second discovery, sequences go on."""
    async with make_simulator(projects=1, jobs_per_project=3) as (sim, url):
        pid = sim.project_ids[0]
        job_id = min(sim.fleet.projects[pid].jobs)
        async with engine(url, [pid]) as eng:
            await until(lambda: len(eng.events()) >= 3, "discovered")
            shard = shard_of(pid, PARTITIONS)
            await eng.scheduler.stop_shard(shard)
            assert shard not in eng.scheduler.shard_status()
            sim.update_job(pid, job_id, desc="while nobody owned the shard")
            eng.scheduler.start_shard(shard, generation=1)
            await until(lambda: len(eng.of_job(pid, job_id)) >= 2, "the update")
            await asyncio.sleep(0.4)
            events = eng.events()
    assert kinds(events).count("discovered") == 3
    assert [e["data"]["sequence"] for e in eng.of_job(pid, job_id)] == [1, 2]


# --- redaction (issue 11) ---------------------------------------------------------------------


def _all_bytes(sink: MemorySink) -> bytes:
    parts = []
    for topic in sink.log:
        for record in sink.records(topic):
            parts += [record.key, record.value or b""]
            parts += [name.encode() + value for name, value in record.headers]
    return b"\0".join(parts)


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_no_secret_reaches_the_sink_even_in_dead_letters(make_simulator, mode):
    from bridge.redact import RedactionSettings
    from bridge.simulator import SECRETS

    async with make_simulator(projects=1, jobs_per_project=12, seed=4) as (sim, url):
        pid = sim.project_ids[0]
        for variant in (0, 3):
            for job_type in ("flink_opensource_sql_job", "flink_jar_job"):
                sim.create_job(pid, job_type=job_type, variant=variant)
        redaction = RedactionSettings(hash_key="k")
        async with engine(url, [pid], mode=mode, redaction=redaction) as eng:
            await until(lambda: len(eng.events()) >= 16, "discovered")
            sim.set_faults(malformed_rate=0.5)
            await until(lambda: len(eng.dead_letters()) >= 3, "dead letters", 15.0)
    blob = _all_bytes(eng.sink)
    forms = {s.encode() for s in SECRETS} | {s.replace("''", "'").encode() for s in SECRETS}
    assert not [f for f in forms if f in blob]
    assert b"******(h:" in blob


# --- filters (issue 11) -----------------------------------------------------------------------


def _settle_statuses(sim: Simulator, pid: str) -> None:
    """No job in a transitional status: no faster polls blur the request counts."""
    for job_id, job in sim.fleet.projects[pid].jobs.items():
        if job.status.value in {"job_submitting", "job_canceling", "job_savepointing",
                                "job_downloading", "job_arrearage_recovering"}:  # fmt: skip
            sim.set_status(pid, job_id, JobStatus.RUNNING)


async def test_filtered_out_jobs_cost_no_detail_call_and_leaving_is_no_delete(make_simulator):
    from bridge.filters import FilterSettings

    async with make_simulator(projects=1, jobs_per_project=0) as (sim, url):
        pid = sim.project_ids[0]
        kept = [sim.create_job(pid, name=f"keep_{i}", status="job_running") for i in range(3)]
        dropped = [sim.create_job(pid, name=f"drop_{i}", status="job_running") for i in range(4)]
        filters = FilterSettings(include_names=["keep_*"])
        async with engine(url, [pid], mode="list", filters=filters) as eng:
            await until(lambda: len(eng.events()) >= 3, "kept jobs discovered")
            await asyncio.sleep(0.6)
            details = eng.requests(sim, "detail", pid)
            sim.update_job(pid, kept[0], name="drop_renamed")  # leaves the filter
            sim.update_job(pid, dropped[0], desc="not ours")
            await asyncio.sleep(0.8)
            left = eng.of_job(pid, kept[0])
            sim.update_job(pid, kept[0], name="keep_again")  # and comes back
            await until(lambda: len(eng.of_job(pid, kept[0])) >= 2, "back in the filter")
            events = eng.events()
    assert details == 3  # one per kept job; the four others cost nothing
    assert {e["data"]["job_id"] for e in events} == set(kept)
    assert kinds(left) == ["discovered"]  # no deleted, no event at all while outside
    back = eng.of_job(pid, kept[0])
    assert kinds(back) == ["discovered", "updated"]
    assert back[1]["data"]["sequence"] == 2
    assert "/name" in back[1]["data"]["changed"]


async def test_filtered_event_kinds_move_state_without_a_sequence_gap(make_simulator):
    from bridge.filters import FilterSettings

    async with make_simulator(projects=1, jobs_per_project=0) as (sim, url):
        pid = sim.project_ids[0]
        job = sim.create_job(pid, name="j", status="job_running")
        filters = FilterSettings(event_kinds=["discovered", "status_changed"])
        async with engine(url, [pid], mode="detail", filters=filters) as eng:
            await until(lambda: len(eng.events()) >= 1, "discovered")
            sim.update_job(pid, job, desc="an update nobody subscribed to")
            await asyncio.sleep(0.6)
            sim.set_status(pid, job, JobStatus.CANCELING)
            await until(lambda: len(eng.events()) >= 2, "the status change")
            await asyncio.sleep(0.4)
            events = eng.of_job(pid, job)
    assert kinds(events) == ["discovered", "status_changed"]
    assert [e["data"]["sequence"] for e in events] == [1, 2]
    assert events[1]["data"]["changed"] == ["/status"]  # the desc change was already taken in


# --- watermarks (issue 11) --------------------------------------------------------------------


def _watermarks(eng: Engine, pid: str) -> list[dict[str, Any]]:
    records = eng.sink.records(eng.sink.topics.watermarks)
    return [orjson.loads(r.value) for r in records if r.key == pid.encode() and r.value]


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_watermarks_advance_with_complete_sweeps_and_stall_while_throttled(
    make_simulator, caplog, mode
):
    from datetime import datetime

    async with make_simulator(projects=2, jobs_per_project=3) as (sim, url):
        pid, other = sim.project_ids
        async with engine(url, sim.project_ids, mode=mode, reconcile_interval_s=0.5) as eng:
            await until(lambda: len(_watermarks(eng, pid)) >= 3, "watermarks")
            sim.set_faults(pid, throttle_per_s=0.001)
            await until(
                lambda: eng.metrics.watermark_stalled_since.labels(pid)._value.get() > 0, "stall"
            )
            stalled = len(_watermarks(eng, pid))
            others = len(_watermarks(eng, other))
            await asyncio.sleep(0.8)
            during = len(_watermarks(eng, pid))
            other_during = len(_watermarks(eng, other))
            sim.set_faults(pid, throttle_per_s=0)
            await until(lambda: len(_watermarks(eng, pid)) > during, "advancing again")
            marks = _watermarks(eng, pid)
    assert during == stalled  # nothing while throttled
    assert other_during > others  # the other project is not held up
    times = [datetime.fromisoformat(m["observed_through"]) for m in marks]
    assert times == sorted(times)
    assert {m["mode"] for m in marks} == {mode}
    assert marks[-1]["jobs"] == 3
    assert "watermark stalled" in caplog.text


def polls(eng: Engine, mode: str, outcomes: tuple[str, ...] = ("ok",)) -> float:
    """Poll cycles of ``mode`` so far that ended in one of ``outcomes``."""
    return float(sum(eng.metrics.polls.labels(mode, o)._value.get() for o in outcomes))


def most_shared(project_ids: list[str]) -> list[str]:
    """The projects of the shard that most of ``project_ids`` share."""
    by_shard: dict[int, list[str]] = {}
    for pid in project_ids:
        by_shard.setdefault(shard_of(pid, PARTITIONS), []).append(pid)
    return max(by_shard.values(), key=len)


async def test_quiet_cycles_sharing_a_shard_share_its_transactions(make_simulator):
    """A quiet cycle's watermark waits for the shard's next write unless the project's previous
    one is still waiting: projects sharing a shard pay about one transaction per interval
    between them, and each project's watermark still moves on at least once per interval."""
    from datetime import datetime

    interval = 0.2
    async with make_simulator(projects=16, jobs_per_project=2) as (sim, url):
        shared = most_shared(sim.project_ids)
        assert len(shared) >= 4
        async with engine(url, shared, mode="list", interval_s=interval) as eng:
            await until(lambda: all(len(_watermarks(eng, p)) >= 2 for p in shared), "first")
            writes, cycles = eng.sink.writes, polls(eng, "list")
            await asyncio.sleep(3.0)
            writes, cycles = eng.sink.writes - writes, polls(eng, "list") - cycles
            marks = {p: _watermarks(eng, p) for p in shared}
            gauges = {p: eng.metrics.watermark.labels(p)._value.get() for p in shared}
    assert cycles >= 40
    intervals = cycles / len(shared)
    assert writes <= 1.5 * intervals, (writes, cycles)  # about one a shard per interval
    for pid, records in marks.items():
        times = [datetime.fromisoformat(m["observed_through"]).timestamp() for m in records]
        assert times == sorted(times)
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert max(gaps) < 2 * interval + 0.3, (pid, gaps)  # written by the next cycle at worst
        assert gauges[pid] == pytest.approx(times[-1], abs=1e-3)  # the metric: what is written


async def test_a_stalled_project_on_a_shared_shard_stays_stalled(make_simulator, caplog):
    """A watermark still waiting when its project stalls is dropped, not carried by another
    project's write: that would report the project advancing again while it is failing."""
    async with make_simulator(projects=16, jobs_per_project=2) as (sim, url):
        shared = most_shared(sim.project_ids)
        async with engine(url, shared, mode="list", interval_s=0.2) as eng:
            await until(lambda: all(len(_watermarks(eng, p)) >= 3 for p in shared), "marks")
            stalled = {p: eng.metrics.watermark_stalled_since.labels(p) for p in shared}
            for pid in shared:
                sim.set_faults(pid, throttle_per_s=0.001)
            await until(lambda: all(g._value.get() > 0 for g in stalled.values()), "stalls")
            throttled = {p: len(_watermarks(eng, p)) for p in shared}
            sim.set_faults(shared[0], throttle_per_s=0)  # its writes go on; the others stall
            flapped = set()
            for _ in range(16):
                await asyncio.sleep(0.05)
                flapped |= {p for p in shared[1:] if stalled[p]._value.get() == 0}
            after = {p: len(_watermarks(eng, p)) for p in shared}
    assert not flapped
    assert all(after[p] == throttled[p] for p in shared[1:])
    assert after[shared[0]] > throttled[shared[0]]
    assert "advancing again" not in "".join(
        r.getMessage() for r in caplog.records if shared[1] in r.getMessage()
    )


async def test_a_project_alone_on_its_shard_writes_every_other_quiet_cycle(make_simulator):
    """Nobody else's write carries its watermark: a quiet cycle waits only when the one before
    wrote, so the project pays half the transactions and its watermark is never more than
    one interval behind its latest cycle."""
    from datetime import datetime

    interval = 0.2
    async with make_simulator(projects=1, jobs_per_project=3) as (sim, url):
        pid = sim.project_ids[0]
        async with engine(url, [pid], mode="detail", interval_s=interval) as eng:
            await until(lambda: len(_watermarks(eng, pid)) >= 2, "first")
            writes, cycles = eng.sink.writes, polls(eng, "detail")
            await asyncio.sleep(2.0)
            writes, cycles = eng.sink.writes - writes, polls(eng, "detail") - cycles
            marks = _watermarks(eng, pid)
    assert cycles >= 6
    assert cycles / 2 - 1 <= writes <= cycles / 2 + 1, (writes, cycles)
    times = [datetime.fromisoformat(m["observed_through"]).timestamp() for m in marks]
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert max(gaps) < 2 * interval + 0.3, gaps


# --- re-snapshot (issue 11) -------------------------------------------------------------------


def _snapshots(eng: Engine, pid: str) -> list[dict[str, Any]]:
    return [e["data"] for e in eng.events(pid) if e["data"]["kind"] == "snapshot"]


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_resnapshot_answers_once_per_live_job_with_its_current_state(make_simulator, mode):
    from bridge.redact import RedactionSettings, Redactor
    from bridge.signals import SnapshotRequest

    async with make_simulator(projects=2, jobs_per_project=4) as (sim, url):
        pid, other = sim.project_ids
        gone = min(sim.fleet.projects[pid].jobs)
        async with engine(url, sim.project_ids, mode=mode, reconcile_interval_s=60.0) as eng:
            await until(lambda: len(eng.events()) >= 8, "discovered")
            sim.delete_job(pid, gone)
            changed = max(sim.fleet.projects[pid].jobs)
            sim.update_job(pid, changed, job_config={"cu_number": 64})  # light row: unchanged
            await until(lambda: len(eng.of_job(pid, gone)) >= 2, "deleted")
            assert eng.scheduler.request_snapshot(SnapshotRequest.new(pid, request_id="r-1"))
            await until(lambda: len(_snapshots(eng, pid)) >= 3, "snapshots")
            assert eng.scheduler.request_snapshot(SnapshotRequest.new(pid, request_id="r-1"))
            shard = shard_of(pid, PARTITIONS)
            await eng.scheduler.stop_shard(shard)  # a new owner restores the answered ids
            eng.scheduler.start_shard(shard, generation=1)
            assert eng.scheduler.request_snapshot(SnapshotRequest.new(pid, request_id="r-1"))
            await asyncio.sleep(1.0)
            snaps = _snapshots(eng, pid)
            marks = [
                r for r in eng.sink.records(eng.sink.topics.watermarks) if r.key == pid.encode()
            ]
            current = {j["job_id"]: j for j in sim.jobs(pid)}
            events = eng.events()
    redact = Redactor(RedactionSettings()).redact
    assert sorted(s["job_id"] for s in snaps) == sorted(current)  # once each, the deleted none
    for snap in snaps:
        expected = redact(sim_detail(sim, pid, snap["job_id"], row=mode == "sweep"))
        assert {k: v for k, v in snap["after"].items() if k != "duration"} == {
            k: v for k, v in expected.items() if k != "duration"
        }
        job_events = [e["data"] for e in events if e["data"]["job_id"] == snap["job_id"]]
        assert [d["sequence"] for d in job_events] == list(range(1, len(job_events) + 1))
    assert not _snapshots(eng, other)
    assert marks
    assert len({e["id"] for e in events}) == len(events)


def sim_detail(sim: Simulator, pid: str, job_id: int, *, row: bool) -> dict[str, Any]:
    """The simulator's current view of a job: the detail, or the sweep row in sweep mode."""
    from bridge.simulator.render import detail, detail_row

    job = sim.fleet.get(pid, job_id)
    return detail_row(job) if row else detail(job)
