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
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.simulator import Simulator
from tests import bridge_config
from tests.kafka_fixtures import eventually, unique_name
from tests.test_app import compare, drive, final_state_problems, read_topic
from tests.test_run_process import bridge_process

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 12
PROJECTS = 60
INTERVAL_S = 1.0
RECONCILE_S = 2.0
SESSION_TIMEOUT_MS = 6000
SLACK_MS = 2 * INTERVAL_S * 1000 + 500
WINDOW_MS = {
    "created": SLACK_MS,
    "status_changed": SLACK_MS,
    "updated": SLACK_MS + RECONCILE_S * 1000,
    "deleted": SLACK_MS,
}
ALL_SHARDS = frozenset(range(PARTITIONS))


def write_config(path: Path, *, instance_id: str | None = None, **where: Any) -> Path:
    """A child's config: the shared test config with this module's pace and shard count;
    ``instance_id`` for static membership."""
    return bridge_config.write_config(
        path,
        **where,
        api={
            "project_rate_per_s": 1000.0,
            "project_burst": 1000,
            "credential_rate_per_s": 1000.0,
            "credential_burst": 1000,
        },
        polling={"interval_s": INTERVAL_S, "reconcile_interval_s": RECONCILE_S, "jitter_s": 0.1},
        kafka={
            "partitions": PARTITIONS,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "instance_id": instance_id,
        },
    )


@dataclass
class Child:
    """One `dli-bridge run` child: its port, log and process (None once gone)."""

    name: str
    port: int
    log: Path
    config: Path
    process: asyncio.subprocess.Process | None = None
    killed_at: float | None = None

    async def readyz(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            async with http.get(f"http://127.0.0.1:{self.port}/readyz") as response:
                return dict(orjson.loads(await response.read())) | {"status": response.status}
        except aiohttp.ClientConnectionError:
            return None

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"http://127.0.0.1:{self.port}/metrics") as response:
            return await response.text()


@dataclass
class Fleet:
    """The children of one test, started and stopped by name, plus the shared run's names."""

    sim: Simulator
    url: str
    bootstrap: str
    name: str
    tmp: Path
    stack: AsyncExitStack
    http: aiohttp.ClientSession
    ports: Iterable[int]
    children: dict[str, Child] = field(default_factory=dict)

    async def start(self, child_name: str, *, static: bool = False) -> Child:
        child = self.children.get(child_name)
        if child is None:
            port = next(iter(self.ports))
            log = self.tmp / f"{child_name}.log"
            config = write_config(
                self.tmp / f"{child_name}.toml",
                bootstrap=self.bootstrap,
                base_url=self.url,
                projects=self.sim.project_ids,
                name=self.name,
                port=port,
                instance_id=child_name if static else None,
            )
            child = self.children[child_name] = Child(child_name, port, log, config)
        child.process = await self.stack.enter_async_context(
            bridge_process(child.config, child.log)
        )
        return child

    def running(self) -> list[Child]:
        return [c for c in self.children.values() if c.process and c.process.returncode is None]

    async def owned(self, children: list[Child]) -> dict[str, frozenset[int]] | None:
        """Each child's ready shards, or None while any of them is not ready."""
        owned = {}
        for child in children:
            body = await child.readyz(self.http)
            if body is None or body["status"] != 200:
                return None
            owned[child.name] = frozenset(int(s) for s in body["shards"])
        return owned

    async def settled(self, timeout_s: float = 60.0) -> dict[str, frozenset[int]]:
        """Wait until the running children are ready and split the 12 shards exactly."""
        found: dict[str, frozenset[int]] = {}

        async def split() -> bool:
            owned = await self.owned(self.running())
            if owned is None:
                return False
            found.clear()
            found.update(owned)
            sets = list(owned.values())
            return frozenset().union(*sets) == ALL_SHARDS and sum(map(len, sets)) == PARTITIONS

        await eventually(split, timeout_s=timeout_s, what="the shards split among the children")
        return found

    async def terminate(self, child: Child) -> int:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await child.process.wait()

    async def terminate_all(self) -> None:
        codes = await asyncio.gather(*(self.terminate(c) for c in self.running()))
        assert all(code == 0 for code in codes), codes

    def output(self) -> str:
        return "\n".join(
            f"--- {c.name}\n{c.log.read_text()[-4000:]}" for c in self.children.values()
        )


def _ports(unused_tcp_port_factory: Any) -> Iterable[int]:
    while True:
        yield unused_tcp_port_factory()


@asynccontextmanager
async def fleet(
    make_simulator: Any, bootstrap: str, request: Any, tmp: Path, ports: Any, **sim: Any
) -> AsyncIterator[Fleet]:
    name = unique_name(request, "scale")
    config = {"projects": PROJECTS, "jobs_per_project": 2, "seed": 9} | sim
    async with (
        make_simulator(**config) as (simulator, url),
        AsyncExitStack() as stack,
        aiohttp.ClientSession() as http,
    ):
        yield Fleet(simulator, url, bootstrap, name, tmp, stack, http, _ports(ports))


async def events_of(run: Fleet) -> list[dict[str, Any]]:
    return await read_topic(run.bootstrap, f"{run.name}.events", PARTITIONS)


def check_events(
    run: Fleet, events: list[dict[str, Any]], started_ms: int, paused: tuple[float, float] | None
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


async def test_three_instances_split_the_shards_and_match_the_truth(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
):
    async with fleet(
        make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
    ) as run:
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


async def test_sigkill_moves_the_shards_within_the_session_timeout(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
):
    async with fleet(
        make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
    ) as run:
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


async def test_sigstop_past_the_session_then_sigcont_is_fenced_and_rejoins(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
):
    async with fleet(
        make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
    ) as run:
        await asyncio.gather(*(run.start(f"i{n}") for n in range(3)))
        await run.settled()
        started_ms = int(time.time() * 1000)
        await drive(run.sim, seconds=2.0, per_s=4.0)
        frozen = run.children["i2"]
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGSTOP)
        stopped = time.time()
        others = [c for c in run.running() if c is not frozen]

        async def taken_over() -> bool:
            owned = await run.owned(others)
            return owned is not None and frozenset().union(*owned.values()) == ALL_SHARDS

        driving = asyncio.create_task(drive(run.sim, seconds=10.0, per_s=4.0))
        await eventually(taken_over, timeout_s=30, what="the others took the frozen shards")
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


async def test_scale_one_three_one_and_a_static_rolling_restart(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
):
    async with fleet(
        make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port_factory
    ) as run:
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
