"""The whole bridge in-process against the simulator and a real broker: events = ground truth."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.app import App
from bridge.settings import Settings
from bridge.simulator import Simulator
from tests.kafka_fixtures import eventually, read_records, unique_name

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5
RECONCILE_S = 1.0  # list mode sees job_config edits only through the reconcile fetch
DELETE_AFTER_MISSES = 2
PARTITIONS = 3


def bridge_environ(
    bootstrap: str, base_url: str, projects: Sequence[str], name: str, **polling: Any
) -> dict[str, str]:
    """BRIDGE_* variables for a bridge on ``base_url`` with topics and ids of its own."""
    environ = {
        "BRIDGE_API__ENDPOINT": base_url,
        "BRIDGE_API__RETRY_BASE_S": "0.05",
        "BRIDGE_API__RETRY_CAP_S": "0.5",
        "BRIDGE_AUTH__MODE": "none",
        "BRIDGE_PROJECTS__IDS": orjson.dumps(list(projects)).decode(),
        "BRIDGE_POLLING__INTERVAL_S": str(INTERVAL_S),
        "BRIDGE_POLLING__TRANSITIONAL_INTERVAL_S": str(INTERVAL_S / 2),
        "BRIDGE_POLLING__RECONCILE_INTERVAL_S": str(RECONCILE_S),
        "BRIDGE_POLLING__DELETE_AFTER_MISSES": str(DELETE_AFTER_MISSES),
        "BRIDGE_POLLING__JITTER_S": "0.05",
        "BRIDGE_POLLING__DRAIN_S": "5",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "BRIDGE_KAFKA__PARTITIONS": str(PARTITIONS),
        "BRIDGE_KAFKA__TRANSACTIONAL_ID_PREFIX": name,
        "BRIDGE_KAFKA__GROUP_ID": name,
        "BRIDGE_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "BRIDGE_KAFKA__REBALANCE_TIMEOUT_MS": "10000",
        "BRIDGE_KAFKA__TOPICS__EVENTS": f"{name}.events",
        "BRIDGE_KAFKA__TOPICS__STATE": f"{name}.state",
        "BRIDGE_KAFKA__TOPICS__DLQ": f"{name}.dlq",
        "BRIDGE_HTTP__BIND": "127.0.0.1:0",
    }
    environ |= {f"BRIDGE_POLLING__{k.upper()}": str(v) for k, v in polling.items()}
    return environ


async def read_topic(
    bootstrap: str, topic: str, partitions: int = PARTITIONS
) -> list[dict[str, Any]]:
    """Every committed record of ``topic`` (read_committed, to the end), values decoded."""
    records = await read_records(bootstrap, topic)
    return [orjson.loads(r.value) for r in records if r.value is not None]


@dataclass
class Verdict:
    checked: int
    problems: list[str]


def compare(
    events: Sequence[Mapping[str, Any]],
    truth: Sequence[Any],
    *,
    started_ms: int,
    window_ms: Mapping[str, float],
    paused_ms: tuple[float, float] | None = None,
) -> Verdict:
    """Check the events against the simulator's ground truth (see the issue's definition).

    Per job: sequences are 1..n, ids unique; every change that stays the job's last change
    for longer than its kind's window appears: the first event of the job observed after
    it has the change's kind (created may read as discovered) and its status. While polling
    was paused (``paused_ms``, a sink outage) a change replaced before polling resumed
    cannot be seen; ``final_state_problems`` checks that the bridge caught up instead.
    """
    problems: list[str] = []
    ids = [e["id"] for e in events]
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicate event ids")
    by_job = events_by_job(events)
    problems += sequence_problems(by_job)
    changes: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for change in truth:
        if change.at >= started_ms:
            changes[(change.project_id, change.job_id)].append(change)
    checked = 0
    for job, job_changes in changes.items():
        for change, after in zip(job_changes, [*job_changes[1:], None], strict=True):
            next_at = after.at if after is not None else float("inf")
            if next_at - change.at <= window_ms[change.kind]:
                continue
            if paused_ms and _superseded_while_paused(change.at, next_at, paused_ms, window_ms):
                continue
            checked += 1
            problem = _matched(change, next_at, by_job.get(job, []))
            if problem:
                problems.append(
                    f"{job} {change.kind}->{change.status_after} at {change.at}: {problem}\n"
                    f"  truth: {[(c.kind, c.status_after, c.at) for c in job_changes]}\n"
                    f"  events: {[_brief(d) for d in by_job.get(job, [])]}"
                )
    return Verdict(checked, problems)


def _superseded_while_paused(
    at: float, next_at: float, paused_ms: tuple[float, float], window_ms: Mapping[str, float]
) -> bool:
    start, end = paused_ms
    return at < end and next_at > start and next_at < end + max(window_ms.values())


def final_state_problems(events: Sequence[Mapping[str, Any]], sim: Simulator) -> list[str]:
    """Jobs whose last event does not show the simulator's current status (or deletion)."""
    problems = []
    for (project_id, job_id), job_events in events_by_job(events).items():
        last = job_events[-1]
        try:
            status = sim.job(project_id, job_id)["status"]
        except Exception:  # the job is gone
            status = None
        if status is None and last["kind"] != "deleted":
            problems.append(f"{project_id}/{job_id}: gone, last event {_brief(last)}")
        elif status is not None and last["status_after"] != status:
            problems.append(f"{project_id}/{job_id}: is {status}, last event {_brief(last)}")
    return problems


def events_by_job(
    events: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    """Event data per (project, job), in the order the topic holds them."""
    by_job: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        data = event["data"]
        by_job[(data["project_id"], data["job_id"])].append(data)
    return by_job


def sequence_problems(by_job: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]]) -> list[str]:
    """Jobs whose sequences are not exactly 1, 2, 3, ... in topic order."""
    problems = []
    for job, job_events in by_job.items():
        sequences = [d["sequence"] for d in job_events]
        if sequences != list(range(1, len(sequences) + 1)):
            problems.append(f"{job}: sequences {sequences}")
    return problems


def _brief(data: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        data["sequence"],
        data["kind"],
        data["status_before"],
        data["status_after"],
        int(_observed_ms(data)),
        data["changed"],
        data["possibly_missed"],
    )


def _observed_ms(data: Mapping[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(data["observed_at"].replace("Z", "+00:00")).timestamp() * 1000


# One poll yields one event per job, of the highest kind among what it saw (DESIGN.md).
RANK = {"updated": 0, "status_changed": 1, "created": 2, "discovered": 2, "deleted": 3}


def _matched(change: Any, next_at: float, job_events: Sequence[Mapping[str, Any]]) -> str:
    """Whether an event observed while ``change`` was the job's latest state reports it.

    A change merged with an earlier one that came too close (a job created and started
    within one interval) is reported by an event of the higher kind; a return to the
    status the bridge last saw (running → exception → running) by an event flagged
    ``possibly_missed``; both count.
    """
    during = [d for d in job_events if change.at - 5 <= _observed_ms(d) <= next_at + 50]
    if not during:
        return "never published"
    for data in during:
        # A state that came and went between two polls: the event says it may have missed it.
        flagged = data["possibly_missed"] and data["status_after"] == change.status_after
        if RANK[data["kind"]] < RANK[change.kind] and not flagged:
            continue
        if change.kind == "deleted" or data["status_after"] == change.status_after:
            return ""
    seen = [(d["sequence"], d["kind"], d["status_after"]) for d in during]
    return f"not reported by the events seen meanwhile: {seen}"


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            async with http.get(f"{url}/readyz") as response:
                return response.status == 200

        await eventually(ready, timeout_s=30, what="/readyz 200")


async def drive(sim: Simulator, seconds: float, per_s: float) -> None:
    """Random changes at ``per_s`` for ``seconds``, spread evenly."""
    for _ in range(int(seconds * per_s)):
        sim.step(1)
        await asyncio.sleep(1.0 / per_s)


@pytest.mark.parametrize("mode", ["list", "detail", "sweep"])
async def test_events_match_the_ground_truth(make_simulator, kafka_bootstrap, request, mode):
    name = unique_name(request, "e2e")
    async with make_simulator(projects=3, jobs_per_project=6, seed=7) as (sim, url):
        environ = bridge_environ(kafka_bootstrap, url, sim.project_ids, name, mode=mode)
        settings = Settings.from_env(environ)
        initial = len(sim.fleet)
        stop = asyncio.Event()
        async with App(settings) as app, asyncio.TaskGroup() as group:
            group.create_task(app.run(stop))
            await wait_ready(app.health_url)
            started_ms = int(time.time() * 1000)
            await drive(sim, seconds=6.0, per_s=4.0)
            await asyncio.sleep(INTERVAL_S * (DELETE_AFTER_MISSES + 3) + RECONCILE_S)
            async with aiohttp.ClientSession() as http, http.get(f"{app.health_url}/metrics") as r:
                metrics = await r.text()
            stop.set()
        events = await read_topic(kafka_bootstrap, settings.kafka.topics.events)
    discovered = [e for e in events if e["data"]["kind"] == "discovered"]
    assert len(discovered) == initial
    slack_ms = 2 * INTERVAL_S * 1000 + 300
    window = {
        "created": slack_ms,
        "status_changed": slack_ms,
        "updated": slack_ms + (RECONCILE_S * 1000 if mode == "list" else 0),
        "deleted": slack_ms,
    }
    verdict = compare(events, sim.changes(), started_ms=started_ms, window_ms=window)
    assert not verdict.problems, "\n".join(verdict.problems)
    assert verdict.checked >= 8
    assert 'dli_bridge_transactions_total{outcome="committed"}' in metrics
    assert "dli_bridge_jobs_tracked" in metrics


async def test_broker_outage_pauses_and_catches_up(make_simulator, request, tmp_path):
    """The broker stops for longer than two intervals and comes back on the same port and
    data dir: the bridge keeps running, /readyz says so meanwhile, and nothing is lost."""
    from bridge.localkafka import LocalKafka
    from tests.kafka_fixtures import kafka_version, warm_up

    name = unique_name(request, "outage")
    kafka = LocalKafka(kafka_version(), data_dir=tmp_path / "kafka")
    bootstrap = await kafka.start()
    try:
        await warm_up(bootstrap)
        async with make_simulator(projects=3, jobs_per_project=4, seed=5) as (sim, url):
            environ = bridge_environ(bootstrap, url, sim.project_ids, name, mode="detail")
            environ["BRIDGE_KAFKA__COMMIT_TIMEOUT_S"] = "3"
            settings = Settings.from_env(environ)
            stop = asyncio.Event()
            async with App(settings) as app, asyncio.TaskGroup() as group:
                group.create_task(app.run(stop))
                await wait_ready(app.health_url)
                started_ms = int(time.time() * 1000)
                await drive(sim, seconds=2.0, per_s=4.0)
                paused_from = time.time() * 1000
                await kafka.stop()
                outage = asyncio.create_task(drive(sim, seconds=3.0, per_s=4.0))
                await wait_status(app.health_url, 503)
                await outage
                await kafka.start()
                await wait_ready(app.health_url)
                paused_until = time.time() * 1000
                await drive(sim, seconds=2.0, per_s=4.0)
                await asyncio.sleep(INTERVAL_S * (DELETE_AFTER_MISSES + 3))
                stop.set()
            events = await read_topic(bootstrap, settings.kafka.topics.events)
    finally:
        await kafka.stop()
    slack_ms = 2 * INTERVAL_S * 1000 + 300
    window = dict.fromkeys(("created", "status_changed", "updated", "deleted"), slack_ms)
    paused = (paused_from, paused_until)
    verdict = compare(
        events, sim.changes(), started_ms=started_ms, window_ms=window, paused_ms=paused
    )
    assert not verdict.problems, "\n".join(verdict.problems)
    assert verdict.checked >= 8
    assert not final_state_problems(events, sim)


async def wait_status(url: str, status: int) -> None:
    async with aiohttp.ClientSession() as http:

        async def answers() -> bool:
            async with http.get(f"{url}/readyz") as response:
                return response.status == status

        await eventually(answers, timeout_s=20, what=f"/readyz {status}")


async def test_a_failure_while_running_is_raised_bare_not_as_a_task_group(monkeypatch):
    """`dli-bridge run` prints one line for a BridgeError; a task group would hide it."""
    from bridge.errors import SinkUnavailable
    from bridge.sink import MemorySink

    environ = bridge_environ("127.0.0.1:1", "http://127.0.0.1:1", ["p-1"], "bare")
    async with App(Settings.from_env(environ), sink=MemorySink(partitions=PARTITIONS)) as app:

        async def broken(shards: object) -> None:
            raise SinkUnavailable("Kafka at 127.0.0.1:1 went away")

        monkeypatch.setattr(app.scheduler, "run", broken)
        with pytest.raises(SinkUnavailable, match="went away"):
            await app.run(asyncio.Event())


async def test_broken_answers_dead_letter_once_and_a_throttled_project_delays_no_other(
    make_simulator, kafka_bootstrap, request
):
    """Against the broker: one project answers half its detail calls with broken bodies,
    another is throttled to a 429 storm; the third's changes still arrive within the usual
    window, the broken project's jobs still end in their true state, and every dead letter
    is a distinct (job, body)."""
    name = unique_name(request, "faults")
    async with make_simulator(projects=3, jobs_per_project=4, seed=11) as (sim, url):
        broken, throttled, healthy = sim.project_ids
        environ = bridge_environ(kafka_bootstrap, url, sim.project_ids, name, mode="detail")
        settings = Settings.from_env(environ)
        stop = asyncio.Event()
        async with App(settings) as app, asyncio.TaskGroup() as group:
            group.create_task(app.run(stop))
            await wait_ready(app.health_url)
            sim.set_faults(broken, malformed_rate=0.5)
            sim.set_faults(throttled, throttle_per_s=0.001)
            started_ms = int(time.time() * 1000)
            for round_ in range(5):
                for pid in (broken, healthy):
                    for job_id in list(sim.fleet.projects[pid].jobs)[:2]:
                        sim.update_job(pid, job_id, desc=f"revision {round_}")
                await asyncio.sleep(INTERVAL_S * 5)  # each change stays the latest > window
            await asyncio.sleep(INTERVAL_S * 6)
            stop.set()
        events = await read_topic(kafka_bootstrap, settings.kafka.topics.events)
        dead = await read_topic(kafka_bootstrap, settings.kafka.topics.dlq)
        final = final_state_problems([e for e in events if e["data"]["project_id"] == broken], sim)
    assert sim.requests[("throttled", throttled)] > 0
    assert sim.requests[("malformed", broken)] > 0
    healthy_events = [e for e in events if e["data"]["project_id"] == healthy]
    healthy_truth = [c for c in sim.changes() if c.project_id == healthy]
    window = dict.fromkeys(("created", "status_changed", "updated", "deleted"), 2000.0)
    verdict = compare(healthy_events, healthy_truth, started_ms=started_ms, window_ms=window)
    assert not verdict.problems, "\n".join(verdict.problems)
    assert verdict.checked >= 8
    assert not final, "\n".join(final)
    assert dead, "no dead letter for the broken answers"
    assert {d["project_id"] for d in dead} == {broken}
    assert len(dead) <= sim.requests[("malformed", broken)]  # never one per poll of a body
    # a body cut off mid-JSON is masked whole (it might hold a secret), so only the readable
    # ones can show that the same (job, body) was not dead-lettered twice
    readable = [(d["job_id"], d["body"]) for d in dead if d["body"] != "******"]
    assert readable
    assert len(readable) == len(set(readable))
