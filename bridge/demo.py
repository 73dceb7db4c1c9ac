"""`dli-bridge demo`: a local Kafka, a lively simulated fleet and the bridge, tailed live.

Everything runs in this process except the broker's JVM, and everything stops with it: the
lifetimes nest in one ``AsyncExitStack`` (broker, then simulator, then the bridge), so a
signal unwinds them in reverse and the broker's temp dir goes with the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import orjson

from bridge import tail
from bridge.app import App, first_error
from bridge.kafkajars import default_kafka_version
from bridge.localkafka import LocalKafka
from bridge.settings import Settings
from bridge.simulator import Simulator, SimulatorConfig

__all__ = ["DemoConfig", "Where", "demo_settings", "run", "running", "throttled"]

log = logging.getLogger(__name__)

Mode = Literal["detail", "list", "sweep"]
EventsMode = Literal["structured", "binary"]

DEFAULT_PROJECTS: Final = 3
DEFAULT_JOBS_PER_PROJECT: Final = 12
DEFAULT_CHANGE_RATE: Final = 2.0  # changes per second across the fleet: something every second
DEFAULT_INTERVAL_S: Final = 2.0  # short, so a change shows within seconds
# a faster fast lane than the product's 5 s: submitting/canceling jobs move on every tick
DEMO_TRANSITIONAL_INTERVAL_S: Final = 1.0
DEMO_RECONCILE_INTERVAL_S: Final = 60.0
PROGRESS_EVERY_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the demo runs; ``bootstrap_servers=None`` starts a local broker."""

    mode: Mode = "list"
    projects: int = DEFAULT_PROJECTS
    jobs_per_project: int = DEFAULT_JOBS_PER_PROJECT
    change_rate: float = DEFAULT_CHANGE_RATE
    interval_s: float = DEFAULT_INTERVAL_S
    events_mode: EventsMode = "structured"
    bootstrap_servers: str | None = None
    seed: int = 0
    http_bind: str = "127.0.0.1:0"


@dataclass(frozen=True, slots=True)
class Where:
    """Where the running demo's parts listen; ``lines()`` is what the demo prints first."""

    bootstrap_servers: str
    simulator_url: str
    metrics_url: str
    topic: str
    local_broker: bool

    def tail_command(self) -> str:
        topic = "" if self.topic == tail.DEFAULT_TOPIC else f" --topic {self.topic}"
        return (
            f"dli-bridge tail --bootstrap-servers {self.bootstrap_servers}{topic} --from-beginning"
        )

    def lines(self, config: DemoConfig) -> list[str]:
        broker = "local broker, stops with the demo" if self.local_broker else "existing cluster"
        fleet = (
            f"{config.projects} projects x {config.jobs_per_project} jobs, "
            f"~{config.change_rate:g} changes/s"
        )
        return [
            f"dli-bridge demo: {fleet}; bridge polls in {config.mode} mode every "
            f"{config.interval_s:g}s",
            f"  kafka      {self.bootstrap_servers}  ({broker})",
            f"  simulator  {self.simulator_url}  (ground truth: {self.simulator_url}/_sim/changes)",
            f"  metrics    {self.metrics_url}",
            f"  tail       {self.tail_command()}",
            "Ctrl-C stops everything. Events:",
        ]


def demo_settings(
    config: DemoConfig, *, bootstrap_servers: str, simulator_url: str, project_ids: Sequence[str]
) -> Settings:
    """The bridge's settings for the demo, built like any other: through ``Settings.from_env``.

    Only this mapping is read (not the caller's ``BRIDGE_*`` variables): the demo is the
    same on every machine.
    """
    environ: Mapping[str, str] = {
        "BRIDGE_API__ENDPOINT": simulator_url,
        "BRIDGE_API__IAM_ENDPOINT": simulator_url,
        "BRIDGE_AUTH__MODE": "none",
        "BRIDGE_PROJECTS__IDS": orjson.dumps(list(project_ids)).decode(),
        "BRIDGE_POLLING__MODE": config.mode,
        "BRIDGE_POLLING__INTERVAL_S": str(config.interval_s),
        "BRIDGE_POLLING__TRANSITIONAL_INTERVAL_S": str(
            min(config.interval_s, DEMO_TRANSITIONAL_INTERVAL_S)
        ),
        "BRIDGE_POLLING__RECONCILE_INTERVAL_S": str(DEMO_RECONCILE_INTERVAL_S),
        "BRIDGE_POLLING__JITTER_S": str(min(0.2, config.interval_s / 10)),
        "BRIDGE_POLLING__DRAIN_S": "3",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
        "BRIDGE_EVENTS__MODE": config.events_mode,
        "BRIDGE_HTTP__BIND": config.http_bind,
    }
    return Settings.from_env(environ)


def throttled(
    say: Callable[[str], object], every_s: float, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], None]:
    """``say``, but lines that only count up (``…: 12 jars downloaded …``) at most every
    ``every_s`` seconds: Maven reports each of some sixty jars."""
    last = -math.inf

    def report(line: str) -> None:
        nonlocal last
        now = clock()
        if "downloaded" in line and now - last < every_s:
            return
        last = now
        say(line)

    return report


async def _broker(
    config: DemoConfig, stack: contextlib.AsyncExitStack, say: Callable[[str], object]
) -> str:
    if config.bootstrap_servers:
        return config.bootstrap_servers
    version = default_kafka_version()
    say(f"starting Kafka {version} (KRaft, one node, loopback)…")
    kafka = LocalKafka(version, progress=throttled(say, PROGRESS_EVERY_S))
    await stack.enter_async_context(kafka)
    return kafka.bootstrap_servers


@contextlib.asynccontextmanager
async def running(
    config: DemoConfig, say: Callable[[str], object]
) -> AsyncIterator[tuple[Where, App]]:
    """Start broker (unless given), simulator and bridge; yield where they are; stop all.

    The bridge is entered (topics made, HTTP up) but not polling: ``App.run`` does that.
    """
    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await _broker(config, stack, say)
        simulator = Simulator(
            SimulatorConfig(
                projects=config.projects,
                jobs_per_project=config.jobs_per_project,
                seed=config.seed,
                change_rate=config.change_rate,
            )
        )
        simulator_url = await stack.enter_async_context(simulator.serve())
        settings = demo_settings(
            config,
            bootstrap_servers=bootstrap,
            simulator_url=simulator_url,
            project_ids=simulator.project_ids,
        )
        say("starting the bridge…")
        app = await stack.enter_async_context(App(settings))
        where = Where(
            bootstrap_servers=bootstrap,
            simulator_url=simulator_url,
            metrics_url=f"{app.health_url}/metrics",
            topic=settings.kafka.topics.events,
            local_broker=config.bootstrap_servers is None,
        )
        yield where, app


async def run(config: DemoConfig, out: Callable[[str], bool], *, color: bool = False) -> None:
    """Run the demo and write each event as a line through ``out`` until cancelled.

    ``out`` returns False when nobody reads any more (a closed pipe): the bridge then
    drains and the demo returns. A failure of any part ends the demo with that failure
    (the first one, not a task group of them).
    """
    # events of this run only: on an existing cluster the topic may hold older ones
    began_ms = int(time.time() * 1000)
    try:
        async with running(config, out) as (where, app):
            for line in where.lines(config):
                out(line)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                group.create_task(app.run(stop), name="bridge")
                group.create_task(_show(where, began_ms, out, color, stop), name="tail")
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None


async def _show(
    where: Where, began_ms: int, out: Callable[[str], bool], color: bool, stop: asyncio.Event
) -> None:
    try:
        async with tail.EventReader(where.bootstrap_servers, where.topic, start=began_ms) as reader:
            async for event in reader:
                if not out(tail.format_event(event, color=color)):
                    return
    finally:
        stop.set()
