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
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bridge.sharding import shard_of
from bridge.writes import MAX_BATCH_JOBS
from tests.bridge_procs import (
    INTERVAL_S,
    WINDOW_MS,
    Child,
    Procs,
    group_config,
    procs_fixture,
    until,
)
from tests.kafka_fixtures import eventually, read_records
from tests.test_app import drive, events_by_job, sequence_problems
from tests.test_production import HASH_KEY, epoch_ms, events_of, watermark_problems

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 4
# More jobs than two transactions hold: the answer spans three (500, 500, 100).
BIG_PROJECT_JOBS = 2 * MAX_BATCH_JOBS + 100
# How long a stepped owner runs between two looks at the events topic.
STEP_S = 0.01
CONFIG = group_config(partitions=PARTITIONS, rate_per_s=5000.0) | {
    "redaction": {"hash_key": HASH_KEY}
}


class Run(Procs):
    """The children of one test, plus who owns a shard and re-snapshot requests."""

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


a_run = procs_fixture(Run, CONFIG, name="a_run", prefix="rebalance")


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
        self._data += events_of(new)
        return new

    def data(self) -> list[dict[str, Any]]:
        """The ``data`` of every event read so far."""
        return self._data


def snapshots(data: Sequence[dict[str, Any]], project_id: str) -> list[dict[str, Any]]:
    return [d for d in data if d["kind"] == "snapshot" and d["project_id"] == project_id]


def answered_lines(child: Child, project_id: str, request_id: str) -> int:
    line = f"project {project_id}: re-snapshot {request_id} answered"
    return child.log.read_text().count(line)


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
    a_run, kafka_bootstrap, fault
):
    from bridge.redact import RedactionSettings, Redactor
    from bridge.simulator.render import detail

    async with a_run(projects=1, jobs_per_project=BIG_PROJECT_JOBS, seed=21) as run:
        sim = run.sim
        pid = sim.project_ids[0]
        sim.add_project(jobs=4)  # the other instance has a project of its own
        live = sorted(j["job_id"] for j in sim.jobs(pid))
        assert len(live) == BIG_PROJECT_JOBS
        children = list(await asyncio.gather(run.start("a"), run.start("b")))
        owned = await run.settled(children, timeout_s=30)
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
            await eventually(
                lambda: run.own_every_shard([survivor]),
                timeout_s=30,
                what="the survivor taking every shard",
            )

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
    data = events_of(records)
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
    assert epoch_ms(times[0]) < stopped_at * 1000 < epoch_ms(times[1])
    assert answered_lines(survivor, pid, "req-1") >= 1
    if fault == "SIGKILL":
        assert answered_lines(owner, pid, "req-1") == 0
    else:  # woken in the middle of its next transaction, it was refused the write
        refused = ("producer fenced", "no longer ours")
        assert any(r in owner.log.read_text() for r in refused), owner.log.read_text()[-4000:]


# --- watermarks -------------------------------------------------------------------------------


async def test_watermarks_hold_while_an_instance_joins_and_another_is_killed(
    a_run, kafka_bootstrap
):
    async with a_run(projects=8, jobs_per_project=4, seed=23) as run:
        sim = run.sim
        first = await run.start("a")
        await run.settled([first], timeout_s=30)
        driving = asyncio.create_task(drive(sim, seconds=18.0, per_s=6.0))
        await asyncio.sleep(3.0)
        joined = time.time() * 1000
        second = await run.start("b")  # joins: every shard is revoked and assigned again
        owned = await run.settled([first, second], timeout_s=30)
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
        await eventually(
            lambda: run.own_every_shard([survivor]),
            timeout_s=30,
            what="the survivor taking every shard",
        )
        took_over = time.time() * 1000
        await driving
        await asyncio.sleep(3 * INTERVAL_S)
        await run.terminate_all()
        marks = await read_records(kafka_bootstrap, f"{run.name}.watermarks")
        events = await read_records(kafka_bootstrap, f"{run.name}.events")
        output = run.output()
    assert "Traceback" not in output, output
    paused = [joining, (killed, took_over)]
    checked, problems = watermark_problems(
        marks, events, sim.changes(), interval_s=INTERVAL_S, window_ms=WINDOW_MS, paused_ms=paused
    )
    assert not problems, "\n".join(problems[:10])
    assert checked > 200, checked
    # the check spanned the rebalances: projects that moved have watermarks from each owner
    assert moved, owned
    for pid in moved:
        times = [m.timestamp for m in marks if orjson.loads(m.value)["project_id"] == pid]
        assert any(t < killed for t in times), pid
        assert any(t > took_over for t in times), pid
