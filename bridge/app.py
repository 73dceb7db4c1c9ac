"""The composition root: builds every part from Settings and stacks their lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from bridge.auth import auth_from_settings
from bridge.client import DliClient, new_session
from bridge.health import HealthServer, Readiness
from bridge.metrics import Metrics
from bridge.scheduler import PollConfig, Scheduler
from bridge.settings import Settings
from bridge.sink import KafkaSink, Sink

__all__ = ["App", "run"]

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class App:
    """One running bridge: HTTP session, DLI client, sink, scheduler and health server.

    ``async with App(settings) as app: await app.run(stop)`` polls until ``stop`` is set,
    then drains for ``polling.drain_s`` and leaves everything in reverse order (producers
    closed, session closed). ``sink`` replaces the Kafka sink (tests pass a MemorySink), and
    ``projects`` the configured or discovered project list.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sink: Sink | None = None,
        partitions: int | None = None,
        projects: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health_url = ""
        self._sink = sink
        self._partitions = partitions or settings.kafka.partitions
        self._projects = list(projects) if projects is not None else None
        self._stack = AsyncExitStack()
        self._scheduler: Scheduler | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"<App {self._scheduler!r} health={self.health_url or '-'}>"

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the App is not entered")
        return self._scheduler

    async def __aenter__(self) -> Self:
        try:
            await self._build(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("stopped")

    async def _build(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        health = HealthServer(settings.http.bind, self.metrics, self.readiness)
        self.health_url = (await stack.enter_async_context(health)).url
        session = await stack.enter_async_context(new_session())
        auth = auth_from_settings(settings.auth, settings.api, session)
        client = await stack.enter_async_context(DliClient(settings.api, auth, session=session))
        sink = self._sink
        if sink is None:
            kafka = await stack.enter_async_context(KafkaSink(settings.kafka))
            sink, self._partitions = kafka, kafka.shards
        projects = self._projects
        if projects is None:
            projects = settings.projects.ids or await _discover(client)
        config = PollConfig.from_settings(settings, partitions=self._partitions)
        self._scheduler = Scheduler(client, sink, config, self.metrics, projects)
        log.info(
            "watching %d projects over %d shards, %s mode every %g s",
            len(projects),
            self._partitions,
            config.mode,
            config.interval_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Own every shard and poll until ``stop`` is set; then drain and return."""
        scheduler = self.scheduler
        async with asyncio.TaskGroup() as group:
            polling = group.create_task(scheduler.run(range(self._partitions)), name="scheduler")
            group.create_task(self._drain_on(stop, polling), name="drain")

    async def _drain_on(self, stop: asyncio.Event, polling: asyncio.Task[None]) -> None:
        await stop.wait()
        self._stopping = True
        drain_s = self.settings.polling.drain_s
        log.info("draining: in-flight cycles get %g s to commit", drain_s)
        self.scheduler.stop()
        done, _ = await asyncio.wait({polling}, timeout=drain_s)
        if not done:
            log.warning("drain deadline passed: cancelling the cycles still running")
            polling.cancel()

    def readiness(self) -> Readiness:
        """Ready when every owned shard is restored and its writer usable (/readyz)."""
        if self._scheduler is None:
            return Readiness(False, "starting")
        shards = self._scheduler.shard_status()
        if self._stopping:
            return Readiness(False, "stopping", shards)
        if not shards:
            return Readiness(False, "no shards owned", shards)
        waiting = sorted(shard for shard, status in shards.items() if status != "ready")
        if waiting:
            states = sorted({shards[s] for s in waiting})
            return Readiness(False, f"shards {waiting} not ready ({', '.join(states)})", shards)
        return Readiness(True, "", shards)


async def _discover(client: DliClient) -> list[str]:
    projects = sorted(p.model.id for p in await client.list_projects())
    log.info("discovered %d projects", len(projects))
    return projects


async def run(settings: Settings) -> None:
    """Run the bridge until SIGINT or SIGTERM, then drain and return (the `run` command).

    The first signal drains (or, during start-up, cancels the start); a second one cancels
    the drain.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("run() must run inside an asyncio task")
    stop = asyncio.Event()
    serving = False
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        log.info("%s received", sig.name)
        if serving and not stop.is_set():
            stop.set()
        else:
            task.cancel()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with App(settings) as app:
            serving = True
            await app.run(stop)
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
    finally:
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
