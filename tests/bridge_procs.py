"""Real `dli-bridge run` children of one test: one consumer group against one simulator.

``Procs`` starts children by name (a port, log and config of their own, the group's topics),
reads which shards each owns from its /readyz, waits for the shards to settle and stops the
children; a test module adds what only it needs (a subclass, a config override)::

    CONFIG = group_config(partitions=12, rate_per_s=1000.0)
    fleet = procs_fixture(Procs, CONFIG, name="fleet", prefix="scale", projects=60)

    async def test_two(fleet):
        async with fleet(jobs_per_project=2) as run:
            await asyncio.gather(run.start("a"), run.start("b"))
            owned = await run.settled()
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from bridge.simulator import Simulator
from tests.bridge_config import merged, write_config
from tests.kafka_fixtures import eventually, unique_name
from tests.sim_fixtures import MakeSimulator
from tests.test_run_process import bridge_process

__all__ = [
    "INTERVAL_S",
    "RECONCILE_S",
    "SESSION_TIMEOUT_MS",
    "WINDOW_MS",
    "Child",
    "Procs",
    "group_config",
    "procs_fixture",
    "until",
    "windows_ms",
]


def windows_ms(interval_s: float, reconcile_s: float) -> dict[str, float]:
    """Per change kind, how long a change must stay a job's latest before a list-mode bridge
    polling at ``interval_s`` must have reported it: two intervals and slack; a config edit
    waits for the reconcile fetch as well."""
    slack_ms = 2 * interval_s * 1000 + 500
    return {
        "created": slack_ms,
        "status_changed": slack_ms,
        "updated": slack_ms + reconcile_s * 1000,
        "deleted": slack_ms,
    }


# The children's pace: each polls its projects every second (list mode: config edits show at
# each reconcile fetch), and a member that stops heartbeating loses its shards after its
# session.
INTERVAL_S = 1.0
RECONCILE_S = 2.0
SESSION_TIMEOUT_MS = 6000
WINDOW_MS = windows_ms(INTERVAL_S, RECONCILE_S)


def group_config(*, partitions: int, rate_per_s: float) -> dict[str, Any]:
    """Config overrides for children at this module's pace that split ``partitions`` shards
    and may call the API ``rate_per_s`` per project and per credential."""
    return {
        "api": {
            "project_rate_per_s": rate_per_s,
            "project_burst": int(rate_per_s),
            "credential_rate_per_s": rate_per_s,
            "credential_burst": int(rate_per_s),
        },
        "polling": {"interval_s": INTERVAL_S, "reconcile_interval_s": RECONCILE_S, "jitter_s": 0.1},
        "kafka": {
            "partitions": partitions,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": SESSION_TIMEOUT_MS // 10,  # quick rebalances
        },
    }


@dataclass
class Child:
    """One `dli-bridge run` child: its port, log, config and process (None until started)."""

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
class Procs:
    """The children of one test against one simulator, sharing topics and group ``name``;
    ``config`` holds the overrides of the test config every child gets (``group_config``)."""

    sim: Simulator
    url: str
    bootstrap: str
    name: str
    tmp: Path
    stack: AsyncExitStack
    http: aiohttp.ClientSession
    ports: Callable[[], int]
    config: Mapping[str, Any]
    children: dict[str, Child] = field(default_factory=dict)

    @property
    def all_shards(self) -> frozenset[int]:
        return frozenset(range(self.config["kafka"]["partitions"]))

    async def start(self, child_name: str, *, static: bool = False) -> Child:
        """Start ``child_name``: the first time with a new port, log and config (``static``:
        with static membership, ``instance_id`` its name), again with the same."""
        child = self.children.get(child_name)
        if child is None:
            port = self.ports()
            config = write_config(
                self.tmp / f"{child_name}.toml",
                bootstrap=self.bootstrap,
                base_url=self.url,
                projects=self.sim.project_ids,
                name=self.name,
                port=port,
                **merged(self.config, {"kafka": {"instance_id": child_name if static else None}}),
            )
            log = self.tmp / f"{child_name}.log"
            child = self.children[child_name] = Child(child_name, port, log, config)
        child.process = await self.stack.enter_async_context(
            bridge_process(child.config, child.log)
        )
        return child

    def running(self) -> list[Child]:
        return [c for c in self.children.values() if c.process and c.process.returncode is None]

    async def owned(self, children: Sequence[Child]) -> dict[str, frozenset[int]] | None:
        """Each child's ready shards, or None while any of them is not ready."""
        owned = {}
        for child in children:
            body = await child.readyz(self.http)
            if body is None or body["status"] != 200:
                return None
            owned[child.name] = frozenset(int(s) for s in body["shards"])
        return owned

    async def own_every_shard(self, children: Sequence[Child]) -> bool:
        """Whether ``children`` are ready and own every shard between them."""
        owned = await self.owned(children)
        return owned is not None and frozenset().union(*owned.values()) == self.all_shards

    async def settled(
        self, children: Sequence[Child] | None = None, timeout_s: float = 60.0
    ) -> dict[str, frozenset[int]]:
        """Wait until ``children`` (by default the running ones, whichever run at each look)
        are ready and split all the shards between them exactly; return the split."""
        found: dict[str, frozenset[int]] = {}

        async def split() -> bool:
            owned = await self.owned(self.running() if children is None else children)
            if owned is None:
                return False
            found.clear()
            found.update(owned)
            sets = list(owned.values())
            shards = self.all_shards
            return frozenset().union(*sets) == shards and sum(map(len, sets)) == len(shards)

        who = "the running children" if children is None else [c.name for c in children]
        await eventually(split, timeout_s=timeout_s, what=f"{who} splitting the shards")
        return found

    async def terminate(self, child: Child) -> int:
        """SIGTERM ``child``; its exit code."""
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await child.process.wait()

    async def terminate_all(self) -> None:
        """SIGTERM every running child at once; each must exit 0."""
        codes = await asyncio.gather(*(self.terminate(c) for c in self.running()))
        assert all(code == 0 for code in codes), f"{codes}\n{self.output()}"

    def output(self) -> str:
        """The end of every child's log."""
        return "\n".join(
            f"--- {c.name}\n{c.log.read_text()[-4000:]}" for c in self.children.values()
        )


P = TypeVar("P", bound=Procs)


def procs_fixture(
    kind: type[P], config: Mapping[str, Any], *, name: str, prefix: str, **simulator: Any
) -> Any:
    """A fixture ``name`` for a test module: ``async with name(**sim) as run`` gives a
    ``kind`` of ``Procs`` with ``config``, against a simulator of ``simulator | sim``, with a
    group and topics of its own (``prefix``, the test's name); on leaving, every child still
    running is killed and the simulator stops."""

    def opener(
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        unused_tcp_port_factory: Callable[[], int],
    ) -> Callable[..., AbstractAsyncContextManager[P]]:
        @asynccontextmanager
        async def open_procs(**sim: Any) -> AsyncIterator[P]:
            group = unique_name(request, prefix)
            async with (
                make_simulator(**(simulator | sim)) as (served, url),
                AsyncExitStack() as stack,
                aiohttp.ClientSession() as http,
            ):
                yield kind(
                    served,
                    url,
                    kafka_bootstrap,
                    group,
                    tmp_path,
                    stack,
                    http,
                    unused_tcp_port_factory,
                    config,
                )

        return open_procs

    return pytest.fixture(name=name)(opener)


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a cheap ``check`` every 5 ms (`eventually` looks every 200 ms)."""
    for _ in range(int(timeout_s / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"not within {timeout_s:g} s")
