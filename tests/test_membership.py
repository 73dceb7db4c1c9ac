"""Membership turns the state topic's consumer-group assignment into owned shards, on real Kafka."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient

from bridge.errors import ConfigError
from bridge.membership import Membership, OnAssigned, OnRevoked
from tests.kafka_fixtures import create_topic, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

log = logging.getLogger(__name__)

SHARDS = 12
ALL = frozenset(range(SHARDS))
SESSION_MS = 6000
REBALANCE_MS = 10000
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Timeline:
    """What every member's app was told, in order, and whether two ever held one shard."""

    events: list[tuple[float, str, str, tuple[int, ...]]] = field(default_factory=list)
    held: dict[str, set[int]] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)

    def callbacks(
        self, name: str, *, assign_s: float = 0.0, revoke_s: float = 0.0
    ) -> tuple[OnAssigned, OnRevoked]:
        """Callbacks that hold shards from the start of on_assigned to the end of on_revoked."""
        self.held[name] = set()

        async def on_assigned(shards: frozenset[int], generation: int) -> None:
            self._note(name, f"assign-start g{generation}", shards)
            for other, theirs in self.held.items():
                if other != name and theirs & shards:
                    self.overlaps.append(f"{name} got {sorted(theirs & shards)} held by {other}")
            self.held[name] |= shards
            await asyncio.sleep(assign_s)
            self._note(name, f"assigned g{generation}", shards)

        async def on_revoked(shards: frozenset[int]) -> None:
            self._note(name, "revoke-start", shards)
            await asyncio.sleep(revoke_s)
            self.held[name] -= shards
            self._note(name, "revoked", shards)

        return on_assigned, on_revoked

    def _note(self, name: str, what: str, shards: frozenset[int]) -> None:
        self.events.append((time.monotonic(), name, what, tuple(sorted(shards))))

    def index(self, name: str, what: str, start: int = 0) -> int:
        """Position of the first event of ``name`` whose kind starts with ``what``."""
        for i, (_, who, kind, _) in enumerate(self.events[start:], start):
            if who == name and kind.startswith(what):
                return i
        raise AssertionError(f"no {what!r} for {name} in {self.events}")

    def kinds(self, name: str) -> list[str]:
        return [kind for _, who, kind, _ in self.events if who == name]


@pytest.fixture
async def state_topic(kafka_bootstrap, topic_name) -> str:
    return await create_topic(kafka_bootstrap, topic_name, partitions=SHARDS)


def member(
    bootstrap: str, group: str, topic: str, callbacks: tuple[OnAssigned, OnRevoked], **kw: Any
) -> Membership:
    on_assigned, on_revoked = callbacks
    options: dict[str, Any] = {
        "session_timeout_ms": SESSION_MS,
        "heartbeat_interval_ms": SESSION_MS // 10,  # quick rebalances
        "rebalance_timeout_ms": REBALANCE_MS,
        **kw,
    }
    return Membership(
        bootstrap_servers=bootstrap,
        group_id=group,
        state_topic=topic,
        on_assigned=on_assigned,
        on_revoked=on_revoked,
        **options,
    )


async def owns(m: Membership, shards: frozenset[int]) -> bool:
    return m.owned == shards and m.ready


async def test_single_member_owns_every_shard(kafka_bootstrap, group_name, state_topic):
    timeline = Timeline()
    async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("a")) as a:
        await eventually(lambda: owns(a, ALL), what="one member owns all 12 shards")
        assert a.generation >= 1
        assert a.rebalances == 1
        assert a.is_current(0, a.generation)
        assert not a.is_current(0, a.generation - 1)
        # the member never reads the state topic: every partition is paused
        assert {tp.partition for tp in a._consumer.paused()} == set(ALL)
    assert timeline.kinds("a")[-2:] == ["revoke-start", "revoked"]  # leaving revokes
    assert not a.owned
    assert not a.is_current(0, 1)


async def test_group_outlives_its_members_so_generations_keep_counting(
    kafka_bootstrap, group_name, state_topic
):
    """Members commit an offset once ready: without one, Kafka deletes the group when the
    last member leaves and the next generation is 1 again (state records carry it)."""
    timeline = Timeline()
    async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("a")) as a:
        await eventually(lambda: owns(a, ALL), what="one member owns all 12 shards")
        first = a.generation
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:

            async def committed() -> bool:
                offsets = await admin.list_consumer_group_offsets(group_name)
                return {tp.partition for tp in offsets} == set(ALL)

            await eventually(committed, what="an offset committed for every shard")
        finally:
            await admin.close()
    async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("b")) as b:
        await eventually(lambda: owns(b, ALL), what="the next member owns all 12 shards")
        assert b.generation > first


async def test_second_member_splits_shards_without_overlap(
    kafka_bootstrap, group_name, state_topic
):
    """Revokes finish before any assignment of the next generation: no instant of double
    ownership, even when the first member's revoke takes a while (its drain)."""
    timeline = Timeline()
    join = member
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            join(kafka_bootstrap, group_name, state_topic, timeline.callbacks("a", revoke_s=1.0))
        )
        await eventually(lambda: owns(a, ALL), what="first member owns all shards")
        first_generation = a.generation

        b = join(kafka_bootstrap, group_name, state_topic, timeline.callbacks("b"))
        async with b:
            await eventually(lambda: _split(a, b), what="the two members split the shards")
            assert a.generation == b.generation > first_generation
            assert len(a.owned) == len(b.owned) == SHARDS // 2
            assert a.rebalances == 2
            assert b.rebalances == 1
            # a's (slow) revoke ended before b was handed anything
            assert timeline.index("a", "revoked") < timeline.index("b", "assign-start")
            split_generation = a.generation
            assert not a.is_current(min(a.owned), first_generation)

        await eventually(lambda: owns(a, ALL), what="the survivor owns all shards again")
        assert a.generation > split_generation
        assert a.rebalances == 3
    assert timeline.overlaps == []
    log.info("timeline: %s", timeline.events)


async def _split(a: Membership, b: Membership) -> bool:
    return a.ready and b.ready and a.owned | b.owned == ALL and not a.owned & b.owned


async def test_slow_on_assigned_keeps_member_in_group(kafka_bootstrap, group_name, state_topic):
    """on_assigned runs in a task: a restore longer than the session timeout does not get the
    member dropped (heartbeats go on), so no second rebalance happens."""
    timeline = Timeline()
    slow = timeline.callbacks("a", assign_s=SESSION_MS / 1000 * 1.5)
    async with member(kafka_bootstrap, group_name, state_topic, slow) as a:
        await eventually(lambda: owns(a, ALL), timeout_s=30.0, what="the slow restore ends")
        generation = a.generation
        await asyncio.sleep(1.0)  # a dropped member would find out at its next heartbeat
        assert a.rebalances == 1
        assert a.generation == generation
        assert a.is_current(0, generation)
    g = generation
    assert timeline.kinds("a") == [
        f"assign-start g{g}",
        f"assigned g{g}",
        "revoke-start",
        "revoked",
    ]


async def test_paused_member_outlives_max_poll_interval(kafka_bootstrap, group_name, state_topic):
    """aiokafka leaves the group after max_poll_interval_ms without a fetch in progress; the
    keep-alive getmany counts as one even though every partition is paused."""
    timeline = Timeline()
    options = {"max_poll_interval_ms": 1500}
    join = member
    async with join(
        kafka_bootstrap, group_name, state_topic, timeline.callbacks("a"), client_options=options
    ) as a:
        await eventually(lambda: owns(a, ALL), what="a owns every shard")
        generation = a.generation
        await asyncio.sleep(4.0)
        assert a.rebalances == 1
        assert a.is_current(0, generation)
        assert a._consumer._coordinator.generation == generation


async def test_slow_inline_assignment_callback_gets_member_dropped(
    kafka_bootstrap, group_name, state_topic
):
    """The control for the test above, with a bare consumer: aiokafka awaits
    on_partitions_assigned before it restarts heartbeats, so sleeping there longer than the
    session gets the member expelled and the group rebalances again."""
    assigned: list[float] = []

    class Inline(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: object) -> None:
            return None

        async def on_partitions_assigned(self, partitions: object) -> None:
            assigned.append(time.monotonic())
            if len(assigned) == 1:
                await asyncio.sleep(SESSION_MS / 1000 * 1.5)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_name,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=600,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.subscribe([state_topic], listener=Inline())

        async def rejoined() -> bool:
            await consumer.getmany(timeout_ms=200)
            return len(assigned) >= 2

        await eventually(rejoined, timeout_s=40.0, what="the member is dropped and rejoins")
    finally:
        await consumer.stop()


async def test_static_member_restart_gets_its_shards_back(kafka_bootstrap, group_name, state_topic):
    """A static member (instance_id) that restarts within the session timeout takes its old
    shards back; the other member keeps its own, never revoked (no reshuffle)."""
    timeline = Timeline()
    join = member
    b = join(kafka_bootstrap, group_name, state_topic, timeline.callbacks("b"), instance_id="b")
    async with b:
        a1 = join(
            kafka_bootstrap, group_name, state_topic, timeline.callbacks("a1"), instance_id="a"
        )
        async with a1:
            await eventually(lambda: _split(a1, b), what="two static members split the shards")
            before, generation, b_rebalances = a1.owned, a1.generation, b.rebalances
            b_seen = len(timeline.kinds("b"))
        # a static member sends no LeaveGroup: the broker keeps a's shards for it
        await asyncio.sleep(0.5)
        assert b.owned == ALL - before
        assert b.rebalances == b_rebalances

        a2 = join(
            kafka_bootstrap, group_name, state_topic, timeline.callbacks("a2"), instance_id="a"
        )
        async with a2:
            await eventually(lambda: _split(a2, b), what="the restarted member is back")
            assert a2.owned == before
            # observed on 3.9 and 4.x: no rebalance at all, the generation stays the same
            assert a2.generation == b.generation == generation
            assert b.rebalances == b_rebalances
            assert timeline.kinds("b")[b_seen:] == [], timeline.events  # b never revoked
    assert timeline.overlaps == []


async def test_revoke_cancels_an_unfinished_restore(kafka_bootstrap, group_name, state_topic):
    """A rebalance during a long on_assigned cancels it; on_revoked still gets every shard."""
    timeline = Timeline()
    slow = timeline.callbacks("a", assign_s=30.0)
    async with member(kafka_bootstrap, group_name, state_topic, slow) as a:
        await eventually(lambda: _true(a.owned == ALL), what="the slow restore starts")
        assert not a.ready
        async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("b")) as b:
            await eventually(
                lambda: _true(b.ready and a.owned | b.owned == ALL),
                what="the shards split while a restores",
            )
            assert timeline.kinds("a")[:3] == ["assign-start g1", "revoke-start", "revoked"]
            assert timeline.events[timeline.index("a", "revoke-start")][3] == tuple(ALL)
    assert timeline.overlaps == []


async def test_failing_on_revoked_is_logged_and_membership_goes_on(
    kafka_bootstrap, group_name, state_topic, caplog
):
    async def broken(shards: frozenset[int]) -> None:
        raise RuntimeError("drain failed")

    timeline = Timeline()
    on_assigned, _ = timeline.callbacks("a")
    async with member(kafka_bootstrap, group_name, state_topic, (on_assigned, broken)) as a:
        await eventually(lambda: owns(a, ALL), what="a owns every shard")
        async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("b")) as b:
            await eventually(lambda: _split(a, b), what="the shards split despite the failure")
    assert "on_revoked" in caplog.text
    assert "drain failed" in caplog.text


async def test_failing_on_assigned_ends_the_membership(kafka_bootstrap, group_name, state_topic):
    """An exception out of on_assigned is a bug: it cancels the task that entered the
    membership, which leaves the group and re-raises it."""
    revoked: list[frozenset[int]] = []

    async def broken(shards: frozenset[int], generation: int) -> None:
        raise RuntimeError("restore failed")

    async def on_revoked(shards: frozenset[int]) -> None:
        revoked.append(shards)

    m = member(kafka_bootstrap, group_name, state_topic, (broken, on_revoked))
    with pytest.raises(ExceptionGroup) as failure:
        async with m:
            await asyncio.sleep(30.0)
    assert failure.group_contains(RuntimeError, match="restore failed")
    assert revoked == [ALL]  # the app still stops whatever it had started


async def test_missing_state_topic_is_a_config_error_and_stays_missing(
    kafka_bootstrap, group_name, topic_name
):
    async def noop(*_: object) -> None:
        return None

    m = member(kafka_bootstrap, group_name, topic_name, (noop, noop), topic_wait_s=1.5)
    with pytest.raises(ConfigError, match="not found"):
        await m.__aenter__()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic_name not in await admin.list_topics()  # not auto-created
    finally:
        await admin.close()


def offline_member(**kw: Any) -> Membership:
    """A member never started: what its constructor checks and derives."""

    async def noop(*_: object) -> None:
        return None

    return Membership(
        bootstrap_servers="127.0.0.1:1",
        group_id="g",
        state_topic="t",
        on_assigned=noop,
        on_revoked=noop,
        **kw,
    )


async def test_rebalance_timeout_must_exceed_drain():
    with pytest.raises(ConfigError, match="rebalance_timeout_ms"):
        offline_member(rebalance_timeout_ms=10000, drain_s=10.0)


@pytest.mark.parametrize(
    ("session_ms", "given", "used"),
    [
        (10000, None, 3000),
        (6000, None, 2000),
        (45000, None, 3000),
        (240, None, 100),
        (6000, 600, 600),
    ],
)
def test_heartbeat_is_a_third_of_the_session_at_most_kafkas_default(session_ms, given, used):
    member = offline_member(session_timeout_ms=session_ms, heartbeat_interval_ms=given)
    assert member._consumer_options["heartbeat_interval_ms"] == used
    assert member._consumer_options["session_timeout_ms"] == session_ms


def test_heartbeat_must_be_below_the_session():
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        offline_member(session_timeout_ms=6000, heartbeat_interval_ms=6000)


# --- members in child processes: SIGKILL and SIGSTOP


class Child:
    """A ``tests.membership_child`` process and the JSON events it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))

    def owned(self) -> frozenset[int]:
        shards: frozenset[int] = frozenset()
        for event in self.events:
            if event["event"] == "assigned":
                shards = frozenset(event["shards"])
            elif event["event"] == "revoked":
                shards = frozenset()
        return shards

    def times(self, event: str) -> list[float]:
        return [e["t"] for e in self.events if e["event"] == event]

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


@asynccontextmanager
async def child(bootstrap: str, group: str, topic: str, *args: str) -> AsyncIterator[Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.membership_child",
        *("--bootstrap", bootstrap, "--group", group, "--topic", topic, *args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    running = Child(process)
    try:
        yield running
    finally:
        await running.close()


async def _child_split(c: Child, m: Membership) -> bool:
    theirs = c.owned()
    return bool(theirs) and m.ready and m.owned | theirs == ALL and not m.owned & theirs


async def test_killed_member_shards_move_within_session_timeout(
    kafka_bootstrap, group_name, state_topic
):
    timeline = Timeline()
    async with child(kafka_bootstrap, group_name, state_topic) as c:
        await eventually(lambda: _true(c.owned() == ALL), what="the child owns all shards")
        async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("s")) as s:
            await eventually(lambda: _child_split(c, s), what="child and survivor split")
            c.signal(signal.SIGKILL)
            killed = time.time()
            await eventually(lambda: owns(s, ALL), what="the survivor takes every shard")
            takeover = time.time() - killed
            log.info("SIGKILL takeover: %.2f s (session timeout %d ms)", takeover, SESSION_MS)
            assert takeover < SESSION_MS / 1000 + 3.0


async def test_stopped_member_is_replaced_then_rejoins_after_sigcont(
    kafka_bootstrap, group_name, state_topic
):
    timeline = Timeline()
    async with child(kafka_bootstrap, group_name, state_topic) as c:
        await eventually(lambda: _true(c.owned() == ALL), what="the child owns all shards")
        async with member(kafka_bootstrap, group_name, state_topic, timeline.callbacks("s")) as s:
            await eventually(lambda: _child_split(c, s), what="child and survivor split")
            stale = c.owned()
            c.signal(signal.SIGSTOP)
            stopped = time.time()
            await eventually(lambda: owns(s, ALL), what="the survivor takes every shard")
            takeover = time.time() - stopped
            assert takeover < SESSION_MS / 1000 + 3.0

            c.signal(signal.SIGCONT)
            resumed = time.time()
            await eventually(lambda: _child_split(c, s), what="the stopped child rejoins")
            revoked_at = [t for t in c.times("revoked") if t > resumed]
            assert revoked_at, c.events  # it gave its stale shards back before rejoining
            # how long, after SIGCONT, it still believed the stale shards were current
            stale_current = [
                e["t"]
                for e in c.events
                if e["event"] == "current" and e["t"] > resumed and not set(e["shards"])
            ]
            believed = (stale_current[0] - resumed) if stale_current else 0.0
            log.info(
                "SIGSTOP takeover %.2f s; after SIGCONT the child held %s as current for "
                "%.3f s, revoked after %.3f s",
                takeover,
                sorted(stale),
                believed,
                revoked_at[0] - resumed,
            )
            assert timeline.overlaps == []


async def _true(value: bool) -> bool:
    return value
