"""Scale-out with real processes: `dli-bridge run` children share the shards through the group.

Every test runs several children against one in-process simulator and the session's broker,
then checks the union of their events against the simulator's ground truth (no change lost,
no event id twice for a read_committed reader, sequences 1..n per job), and who polled what
from each child's /readyz and log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pytest

from tests.bridge_procs import (
    INTERVAL_S,
    RECONCILE_S,
    SESSION_TIMEOUT_MS,
    WINDOW_MS,
    Child,
    Procs,
    group_config,
    procs_fixture,
)
from tests.kafka_fixtures import eventually
from tests.test_app import compare, drive, final_state_problems, read_topic

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 12
PROJECTS = 60
ALL_SHARDS = frozenset(range(PARTITIONS))
CONFIG = group_config(partitions=PARTITIONS, rate_per_s=1000.0)


fleet = procs_fixture(
    Procs, CONFIG, name="fleet", prefix="scale", projects=PROJECTS, jobs_per_project=2, seed=9
)


async def events_of(run: Procs) -> list[dict[str, Any]]:
    return await read_topic(run.bootstrap, f"{run.name}.events", PARTITIONS)


def check_events(
    run: Procs, events: list[dict[str, Any]], started_ms: int, paused: tuple[float, float] | None
) -> int:
    verdict = compare(
        events, run.sim.changes(), started_ms=started_ms, window_ms=WINDOW_MS, paused_ms=paused
    )
    assert not verdict.problems, "\n".join(verdict.problems[:20])
    return verdict.checked


# --- who polled what, from the children's logs ------------------------------------------------

_LINE = re.compile(r"^(\S+ \S+) .*?shard (\d+) (open \(generation|closed)")


def ownership(children: Iterable[Child]) -> dict[int, list[tuple[float, float, str]]]:
    """Per shard, the (opened, closed, child) intervals the logs show; a kill ends one."""
    intervals: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for child in children:
        opened: dict[int, float] = {}
        for line in child.log.read_text().splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            shard = int(match[2])
            if match[3].startswith("open"):
                opened[shard] = at
            elif shard in opened:
                intervals[shard].append((opened.pop(shard), at, child.name))
        end = child.killed_at or float("inf")
        for shard, at in opened.items():
            intervals[shard].append((at, end, child.name))
    return intervals


def overlaps(intervals: dict[int, list[tuple[float, float, str]]]) -> list[str]:
    """Shards two children polled at the same time."""
    found = []
    for shard, spans in intervals.items():
        spans = sorted(spans)
        for (_, a_end, a), (b_start, _, b) in itertools.pairwise(spans):
            if a != b and b_start < a_end:
                found.append(f"shard {shard}: {a} until {a_end:.3f}, {b} from {b_start:.3f}")
    return found


# --- the tests ----------------------------------------------------------------------------------


async def test_three_instances_split_the_shards_and_match_the_truth(fleet):
    async with fleet() as run:
        initial = len(run.sim.fleet)
        await asyncio.gather(*(run.start(f"i{n}") for n in range(3)))
        owned = await run.settled()
        started_ms = int(time.time() * 1000)
        await drive(run.sim, seconds=8.0, per_s=4.0)
        await asyncio.sleep(INTERVAL_S * 4 + RECONCILE_S)
        assert await run.owned(run.running()) == owned, "the assignment moved on a quiet run"
        metrics = [await c.metrics(run.http) for c in run.running()]
        await run.terminate_all()
        events = await events_of(run)
    output = run.output()
    assert "Traceback" not in output, output
    assert all(len(shards) == 4 for shards in owned.values()), owned
    assert sum(e["data"]["kind"] == "discovered" for e in events) == initial
    assert check_events(run, events, started_ms, None) >= 10
    assert not overlaps(ownership(run.children.values()))
    for text in metrics:
        assert "dli_bridge_shards_owned 4.0" in text
        assert "dli_bridge_rebalances_total" in text
        assert "dli_bridge_restore_seconds" in text


async def test_sigkill_moves_the_shards_within_the_session_timeout(fleet, request):
    async with fleet() as run:
        await asyncio.gather(*(run.start(f"i{n}") for n in range(3)))
        await run.settled()
        started_ms = int(time.time() * 1000)
        await drive(run.sim, seconds=3.0, per_s=4.0)
        victim = run.children["i1"]
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)  # mid-cycle, transactions open
        killed = victim.killed_at = time.time()
        changes = asyncio.create_task(drive(run.sim, seconds=6.0, per_s=4.0))
        await victim.process.wait()
        await run.settled(timeout_s=30)
        takeover_s = time.time() - killed
        await changes
        await drive(run.sim, seconds=3.0, per_s=4.0)
        await asyncio.sleep(INTERVAL_S * 4 + RECONCILE_S)
        await run.terminate_all()
        events = await events_of(run)
    log.info("takeover after SIGKILL: %.2f s", takeover_s)  # the issue asks for this number
    request.node.user_properties.append(("takeover_s", round(takeover_s, 2)))
    assert takeover_s < SESSION_TIMEOUT_MS / 1000 + 4.0, takeover_s
    paused = (killed * 1000, (killed + takeover_s) * 1000)
    assert check_events(run, events, started_ms, paused) >= 10
    assert not overlaps(ownership(run.children.values()))


async def test_sigstop_past_the_session_then_sigcont_is_fenced_and_rejoins(fleet):
    async with fleet() as run:
        await asyncio.gather(*(run.start(f"i{n}") for n in range(3)))
        await run.settled()
        started_ms = int(time.time() * 1000)
        await drive(run.sim, seconds=2.0, per_s=4.0)
        frozen = run.children["i2"]
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGSTOP)
        stopped = time.time()
        others = [c for c in run.running() if c is not frozen]
        driving = asyncio.create_task(drive(run.sim, seconds=10.0, per_s=4.0))
        await eventually(
            lambda: run.own_every_shard(others),
            timeout_s=30,
            what="the others took the frozen shards",
        )
        took_over = time.time()
        await driving  # changes the frozen member's stale state does not know
        frozen.process.send_signal(signal.SIGCONT)
        await run.settled(timeout_s=45)  # it rejoined and got shards again
        await drive(run.sim, seconds=3.0, per_s=4.0)
        await asyncio.sleep(INTERVAL_S * 4 + RECONCILE_S)
        await run.terminate_all()
        events = await events_of(run)
    output = frozen.log.read_text()
    assert "Traceback" not in output, output[-4000:]
    paused = (stopped * 1000, took_over * 1000)
    # No duplicate id, sequences 1..n per job: a stale owner's write would show as a repeated
    # sequence (its state predates the new owner's commits), and a stale state record winning
    # a restore would restart a job's sequence.
    assert check_events(run, events, started_ms, paused) >= 10


async def test_scale_one_three_one_and_a_static_rolling_restart(fleet):
    async with fleet() as run:
        await run.start("i0", static=True)
        await run.settled()
        started_ms = int(time.time() * 1000)
        await drive(run.sim, seconds=2.0, per_s=4.0)
        await asyncio.gather(run.start("i1", static=True), run.start("i2", static=True))
        await run.settled()
        await drive(run.sim, seconds=2.0, per_s=4.0)
        # rolling restart: each member in turn, same instance_id, SIGTERM then start again
        for child_name in ("i0", "i1", "i2"):
            child = run.children[child_name]
            assert await run.terminate(child) == 0
            await run.start(child_name, static=True)
            await run.settled()
            await drive(run.sim, seconds=1.0, per_s=4.0)
        # and down to one
        for child_name in ("i1", "i2"):
            assert await run.terminate(run.children[child_name]) == 0
        owned = await run.settled(timeout_s=SESSION_TIMEOUT_MS / 1000 + 20)
        assert owned == {"i0": ALL_SHARDS}
        await drive(run.sim, seconds=2.0, per_s=4.0)
        await asyncio.sleep(INTERVAL_S * 4 + RECONCILE_S)
        await run.terminate_all()
        events = await events_of(run)
    assert "Traceback" not in run.output(), run.output()
    # A static member that leaves sends no LeaveGroup: its shards wait for its session (or
    # its return), so a change replaced within such a wait cannot be seen; what is checked:
    # no duplicate id, sequences 1..n, and every job's last event shows where it ended up.
    verdict = compare(events, run.sim.changes(), started_ms=started_ms, window_ms=WINDOW_MS)
    problems = [p for p in verdict.problems if "duplicate" in p or "sequences" in p]
    assert not problems, "\n".join(problems)
    assert not final_state_problems(events, run.sim)
    assert not overlaps(ownership(run.children.values()))
