"""Issue 11 across a rebalance, with real `dli-bridge run` children and the real broker.

- A re-snapshot whose owner dies (SIGKILL) or stalls (SIGSTOP, then SIGCONT as a stale owner)
  between two of its answer's transactions: the survivor takes the shard over and finishes;
  every live job of the project gets exactly one ``snapshot`` event, equal to the simulator's
  view, and the same request id sent again answers nothing new.
- Watermarks while an instance joins and another is SIGKILLed with changes flowing: each one a
  read_committed reader sees comes after every older change of its project.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bridge.scheduler import MAX_BATCH_JOBS
from bridge.sharding import shard_of
from bridge.simulator import Simulator
from tests.bridge_config import write_config
from tests.kafka_fixtures import eventually, read_records, unique_name
from tests.test_app import (
    _matched,
    _superseded_while_paused,
    drive,
    events_by_job,
    sequence_problems,
)
from tests.test_production import HASH_KEY
from tests.test_run_process import bridge_process
from tests.test_scaleout import Child

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 4
ALL_SHARDS = frozenset(range(PARTITIONS))
INTERVAL_S = 1.0
SESSION_TIMEOUT_MS = 6000
# More jobs than two transactions hold: the answer spans three (500, 500, 100).
BIG_PROJECT_JOBS = 2 * MAX_BATCH_JOBS + 100
# How long a stepped owner runs between two looks at the events topic.
STEP_S = 0.01


def child_config(path: Path, run: Run, port: int) -> Path:
    return write_config(
        path,
        bootstrap=run.bootstrap,
        base_url=run.url,
        projects=run.sim.project_ids,
        name=run.name,
        port=port,
        api={
            "project_rate_per_s": 5000.0,
            "project_burst": 5000,
            "credential_rate_per_s": 5000.0,
            "credential_burst": 5000,
        },
        polling={"interval_s": INTERVAL_S, "reconcile_interval_s": 2.0, "jitter_s": 0.1},
        kafka={"partitions": PARTITIONS, "session_timeout_ms": SESSION_TIMEOUT_MS},
        redaction={"hash_key": HASH_KEY},
    )


@dataclass
class Run:
    """The children of one test against one simulator, sharing topics and group ``name``."""

    sim: Simulator
    url: str
    bootstrap: str
    name: str
    tmp: Path
    stack: AsyncExitStack
    http: aiohttp.ClientSession
    ports: Any
    children: dict[str, Child] = field(default_factory=dict)

    async def start(self, child_name: str) -> Child:
        port = self.ports()
        config = child_config(self.tmp / f"{child_name}.toml", self, port)
        child = Child(child_name, port, self.tmp / f"{child_name}.log", config)
        self.children[child_name] = child
        child.process = await self.stack.enter_async_context(bridge_process(config, child.log))
        return child

    def running(self) -> list[Child]:
        return [c for c in self.children.values() if c.process and c.process.returncode is None]

    async def owned(self, children: Sequence[Child]) -> dict[str, frozenset[int]] | None:
        """Each child's ready shards, or None while one of them is not ready."""
        found = {}
        for child in children:
            body = await child.readyz(self.http)
            if body is None or body["status"] != 200:
                return None
            found[child.name] = frozenset(int(s) for s in body["shards"])
        return found

    async def settled(self, children: Sequence[Child], timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until ``children`` are ready and split all the shards between them exactly."""
        found: dict[str, frozenset[int]] = {}

        async def split() -> bool:
            owned = await self.owned(children)
            if owned is None:
                return False
            found.clear()
            found.update(owned)
            sets = list(owned.values())
            return frozenset().union(*sets) == ALL_SHARDS and sum(map(len, sets)) == PARTITIONS

        names = [c.name for c in children]
        await eventually(split, timeout_s=timeout_s, what=f"{names} splitting the shards")
        return found

    async def owner_of(self, shard: int) -> Child:
        for child in self.running():
            owned = await self.owned([child])
            if owned is not None and shard in owned[child.name]:
                return child
        raise AssertionError(f"no running child owns shard {shard}")

    async def resnapshot(self, project_id: str, request_id: str) -> None:
        """`dli-bridge resnapshot`, a child process of its own, with a child's config."""
        config = next(iter(self.children.values())).config
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "resnapshot",
            "--project",
            project_id,
            "--request-id",
            request_id,
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()

    async def terminate_all(self) -> None:
        async def terminate(child: Child) -> int:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                return await child.process.wait()

        codes = await asyncio.gather(*(terminate(c) for c in self.running()))
        assert all(code == 0 for code in codes), f"{codes}\n{self.output()}"

    def output(self) -> str:
        return "\n".join(
            f"--- {c.name}\n{c.log.read_text()[-4000:]}" for c in self.children.values()
        )


@asynccontextmanager
async def a_run(
    make_simulator: Any, bootstrap: str, request: Any, tmp: Path, ports: Any, **sim: Any
) -> AsyncIterator[Run]:
    name = unique_name(request, "rebalance")
    async with (
        make_simulator(**sim) as (simulator, url),
        AsyncExitStack() as stack,
        aiohttp.ClientSession() as http,
    ):
        yield Run(simulator, url, bootstrap, name, tmp, stack, http, ports)


class TopicTail:
    """A read_committed reader of every partition of ``topic`` from its beginning;
    ``catch_up`` reads up to the partitions' current ends (their last stable offsets)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._data: list[dict[str, Any]] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        self._assigned: list[TopicPartition] = []

    async def __aenter__(self) -> Self:
        consumer = self._consumer
        await consumer.start()
        async with asyncio.timeout(10.0):
            while not (partitions := consumer.partitions_for_topic(self.topic)):
                await consumer._client.force_metadata_update()
        self._assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(self._assigned)
        await consumer.seek_to_beginning(*self._assigned)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def catch_up(self) -> list[ConsumerRecord[bytes, bytes]]:
        consumer, assigned = self._consumer, self._assigned
        end = await consumer.end_offsets(assigned)
        new: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(*assigned, timeout_ms=50)
                for records in batches.values():
                    new += records
        self.records += new
        self._data += [orjson.loads(r.value)["data"] for r in new if r.value is not None]
        return new

    def data(self) -> list[dict[str, Any]]:
        """The ``data`` of every event read so far."""
        return self._data


def snapshots(data: Sequence[dict[str, Any]], project_id: str) -> list[dict[str, Any]]:
    return [d for d in data if d["kind"] == "snapshot" and d["project_id"] == project_id]


def answered_lines(child: Child, project_id: str, request_id: str) -> int:
    line = f"project {project_id}: re-snapshot {request_id} answered"
    return child.log.read_text().count(line)


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a cheap ``check`` every 5 ms (`eventually` looks every 200 ms)."""
    for _ in range(int(timeout_s / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"not within {timeout_s:g} s")


async def stop_in_the_middle(
    process: asyncio.subprocess.Process, tail: TopicTail, project_id: str, total: int
) -> int:
    """Run ``process`` in short slices (SIGCONT, sleep, SIGSTOP) until the events topic shows
    part of the answer, not all of it; return how many snapshots it shows, ``process`` stopped.
    """
    async with asyncio.timeout(30):
        while True:
            process.send_signal(signal.SIGSTOP)
            await tail.catch_up()
            if snapshots(tail.data(), project_id):
                await asyncio.sleep(0.5)  # a commit in flight at the stop completes; see it
                await tail.catch_up()
                shown = len(snapshots(tail.data(), project_id))
                assert shown < total, "the whole answer committed in one slice"
                return shown
            process.send_signal(signal.SIGCONT)
            await asyncio.sleep(STEP_S)


# --- re-snapshot ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
async def test_a_resnapshot_survives_its_owner_failing_between_two_answer_transactions(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory, fault
):
    from bridge.redact import RedactionSettings, Redactor
    from bridge.simulator.render import detail

    async with a_run(
        make_simulator,
        kafka_bootstrap,
        request,
        tmp_path,
        unused_tcp_port_factory,
        projects=1,
        jobs_per_project=BIG_PROJECT_JOBS,
        seed=21,
    ) as run:
        sim = run.sim
        pid = sim.project_ids[0]
        sim.add_project(jobs=4)  # the other instance has a project of its own
        live = sorted(j["job_id"] for j in sim.jobs(pid))
        assert len(live) == BIG_PROJECT_JOBS
        children = list(await asyncio.gather(run.start("a"), run.start("b")))
        owned = await run.settled(children)
        shard = shard_of(pid, PARTITIONS)
        owner = next(c for c in children if shard in owned[c.name])
        survivor = next(c for c in children if c is not owner)
        assert owner.process is not None
        events_topic = f"{run.name}.events"
        async with TopicTail(kafka_bootstrap, events_topic) as tail:

            async def discovered() -> bool:
                await tail.catch_up()
                found = [d for d in tail.data() if d["project_id"] == pid]
                return len({d["job_id"] for d in found}) == len(live)

            await eventually(discovered, timeout_s=30, what=f"the {len(live)} jobs discovered")
            details = sim.requests[("detail", pid)]
            await run.resnapshot(pid, "req-1")

            # The owner fetches every job's detail (a snapshot is fresh), then commits the
            # answer in three transactions: stop it once the first shows, not the last.
            await until(lambda: sim.requests[("detail", pid)] - details >= len(live) // 2)
            first_part = await stop_in_the_middle(owner.process, tail, pid, len(live))
            stopped_at = time.time()
            if fault == "SIGKILL":
                owner.process.send_signal(signal.SIGKILL)
                await owner.process.wait()

            async def taken_over() -> bool:
                found = await run.owned([survivor])
                return found is not None and found[survivor.name] == ALL_SHARDS

            await eventually(taken_over, timeout_s=30, what="the survivor taking every shard")

            async def complete() -> bool:
                await tail.catch_up()
                return len(snapshots(tail.data(), pid)) >= len(live)

            await eventually(complete, timeout_s=30, what="the rest of the answer")
            if fault == "SIGSTOP":
                # the stale owner wakes up in the middle of its answer's next transaction
                owner.process.send_signal(signal.SIGCONT)
                await run.settled(children, timeout_s=45)
            # the same request again: whoever owns the project now answers it with nothing
            now_owner = await run.owner_of(shard)
            before = answered_lines(now_owner, pid, "req-1")
            await run.resnapshot(pid, "req-1")

            async def answered_again() -> bool:
                return answered_lines(now_owner, pid, "req-1") > before

            await eventually(answered_again, timeout_s=20, what="the repeated request handled")
            await asyncio.sleep(INTERVAL_S)
            await run.terminate_all()
        records = await read_records(kafka_bootstrap, events_topic)
        redact = Redactor(RedactionSettings(hash_key=HASH_KEY)).redact
        views = {j: redact(detail(sim.fleet.get(pid, j))) for j in live}
        output = run.output()
    assert "Traceback" not in output, output
    data = [orjson.loads(r.value)["data"] for r in records if r.value is not None]
    snaps = snapshots(data, pid)
    assert sorted(d["job_id"] for d in snaps) == live  # each live job once, no more
    wrong = [d["job_id"] for d in snaps if d["after"] != views[d["job_id"]]]
    assert not wrong, f"{len(wrong)} snapshots differ from the simulator's view: {wrong[:10]}"
    assert all(not d["changed"] and not d["patch"] and not d["before"] for d in snaps)
    by_job = {k: v for k, v in events_by_job([{"data": d} for d in data]).items() if k[0] == pid}
    assert not sequence_problems(by_job), sequence_problems(by_job)[:10]
    ids = [orjson.loads(r.value)["id"] for r in records if r.value is not None]
    assert len(ids) == len(set(ids))
    # the answer really was split: part by the first owner before it failed, the rest by the
    # survivor (one observation time per answering cycle)
    times = sorted({d["observed_at"] for d in snaps})
    assert len(times) == 2, times
    first = [d for d in snaps if d["observed_at"] == times[0]]
    log.info("answer split: %d seen at the stop, %d by the first owner", first_part, len(first))
    assert first_part <= len(first) < len(live), (first_part, len(first))
    assert _ms(times[0]) < stopped_at * 1000 < _ms(times[1])
    assert answered_lines(survivor, pid, "req-1") >= 1
    if fault == "SIGKILL":
        assert answered_lines(owner, pid, "req-1") == 0
    else:  # woken in the middle of its next transaction, it was refused the write
        refused = ("producer fenced", "no longer ours")
        assert any(r in owner.log.read_text() for r in refused), owner.log.read_text()[-4000:]


def _ms(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


# --- watermarks -------------------------------------------------------------------------------

SLACK_MS = 2 * INTERVAL_S * 1000 + 500
WINDOW_MS = {
    "created": SLACK_MS,
    "status_changed": SLACK_MS,
    "updated": SLACK_MS + 2000,  # list mode: config edits wait for the reconcile fetch (2 s)
    "deleted": SLACK_MS,
}


def watermark_problems(
    marks: Sequence[ConsumerRecord[bytes, bytes]],
    events: Sequence[ConsumerRecord[bytes, bytes]],
    truth: Sequence[Any],
    *,
    paused_ms: Sequence[tuple[float, float]],
) -> tuple[int, list[str]]:
    """Per watermark and job: what a read_committed reader has when it reads the watermark
    (the job's events committed no later: record times, one host's clock, a cycle's events
    before its watermark in one transaction) against the changes older than its horizon,
    ``observed_through`` minus one interval.

    - The job's last event shows the state it had at the horizon, or a later one: the
      reader's view is not behind the horizon. (A change that came and went while no
      instance polled, running -> savepointing -> running, shows as no event or an update.)
    - Every change that stayed the job's state longer than its kind's window is reported,
      as ``test_app.compare`` has it, except one superseded while no instance polled
      (``paused_ms``: a rebalance, a killed owner's session).
    """
    changes: dict[tuple[str, int], list[Any]] = {}
    for change in truth:
        changes.setdefault((change.project_id, change.job_id), []).append(change)
    published: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
    for record in events:
        data = orjson.loads(record.value)["data"]
        published.setdefault((data["project_id"], data["job_id"]), []).append(
            (record.timestamp, data)
        )
    problems, checked = [], 0
    for mark in marks:
        wm = orjson.loads(mark.value)
        horizon = _ms(wm["observed_through"]) - INTERVAL_S * 1000
        for (pid, job_id), job_changes in changes.items():
            due = [c for c in job_changes if c.at < horizon]
            if pid != wm["project_id"] or not due:
                continue
            checked += 1
            seen = sorted(
                (d for at, d in published.get((pid, job_id), []) if at <= mark.timestamp),
                key=lambda d: d["sequence"],
            )
            where = (
                f"watermark {wm} (record time {mark.timestamp}), job {job_id}\n"
                f"  truth: {[(c.kind, str(c.status_after), c.at) for c in job_changes]}\n"
                f"  events: {[_brief(d) for d in seen]}\n "
            )
            states = {_state(c.kind, c.status_after) for c in job_changes[len(due) - 1 :]}
            shown = _state(seen[-1]["kind"], seen[-1]["status_after"]) if seen else "unknown"
            if shown not in states:
                problems.append(f"{where}: shows {shown}, truth since the horizon {states}")
            for change, after in zip(due, [*job_changes[1:], None][: len(due)], strict=True):
                next_at = after.at if after is not None else float("inf")
                if next_at - change.at <= WINDOW_MS[change.kind] or any(
                    _superseded_while_paused(change.at, next_at, p, WINDOW_MS) for p in paused_ms
                ):
                    continue
                if problem := _matched(change, next_at, seen):
                    problems.append(f"{where}: {change.kind} at {change.at}: {problem}")
    return checked, problems


def _brief(data: dict[str, Any]) -> tuple[Any, ...]:
    return data["sequence"], data["kind"], data["status_after"], data["observed_at"]


def _state(kind: str, status: str | None) -> str:
    return "deleted" if kind == "deleted" else str(status)


async def test_watermarks_hold_while_an_instance_joins_and_another_is_killed(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
):
    async with a_run(
        make_simulator,
        kafka_bootstrap,
        request,
        tmp_path,
        unused_tcp_port_factory,
        projects=8,
        jobs_per_project=4,
        seed=23,
    ) as run:
        sim = run.sim
        first = await run.start("a")
        await run.settled([first])
        driving = asyncio.create_task(drive(sim, seconds=18.0, per_s=6.0))
        await asyncio.sleep(3.0)
        joined = time.time() * 1000
        second = await run.start("b")  # joins: every shard is revoked and assigned again
        owned = await run.settled([first, second])
        joining = (joined, time.time() * 1000)
        await asyncio.sleep(3.0)
        # the one polling more projects dies, cycles and transactions in flight
        polled = {
            c.name: {p for p in sim.project_ids if shard_of(p, PARTITIONS) in owned[c.name]}
            for c in (first, second)
        }
        victim, survivor = sorted((first, second), key=lambda c: -len(polled[c.name]))
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        killed = time.time() * 1000
        await victim.process.wait()
        moved = polled[victim.name]

        async def taken_over() -> bool:
            found = await run.owned([survivor])
            return found is not None and found[survivor.name] == ALL_SHARDS

        await eventually(taken_over, timeout_s=30, what="the survivor taking every shard")
        took_over = time.time() * 1000
        await driving
        await asyncio.sleep(3 * INTERVAL_S)
        await run.terminate_all()
        marks = await read_records(kafka_bootstrap, f"{run.name}.watermarks")
        events = await read_records(kafka_bootstrap, f"{run.name}.events")
        output = run.output()
    assert "Traceback" not in output, output
    paused = [joining, (killed, took_over)]
    checked, problems = watermark_problems(marks, events, sim.changes(), paused_ms=paused)
    assert not problems, "\n".join(problems[:10])
    assert checked > 200, checked
    # the check spanned the rebalances: projects that moved have watermarks from each owner
    assert moved, owned
    for pid in moved:
        times = [m.timestamp for m in marks if orjson.loads(m.value)["project_id"] == pid]
        assert any(t < killed for t in times), pid
        assert any(t > took_over for t in times), pid
