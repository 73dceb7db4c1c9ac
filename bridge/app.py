"""The composition root: builds every part from Settings and stacks their lifetimes.

With the Kafka sink every instance joins one consumer group on the state topic and polls the
shards Kafka assigns it (DESIGN.md, "Guarantees and scale-out"); an injected sink (tests,
MemorySink) owns every shard. With ``[projects] discover = true`` the project list is read
again every ``polling.reconcile_interval_s``: an owned shard whose projects changed restarts
on the new list (a project that disappeared is no longer polled; its jobs get no delete
events, their state stays in the state topic for a project that comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from bridge import logs
from bridge.auth import auth_from_settings
from bridge.client import DliClient, new_session
from bridge.errors import ApiError
from bridge.health import HealthServer, Readiness
from bridge.membership import Membership
from bridge.metrics import Metrics
from bridge.scheduler import PollConfig, Scheduler
from bridge.settings import Settings
from bridge.shard import Held, ShardStatus, wait_stop
from bridge.signals import SignalReader
from bridge.sink import KafkaSink, Sink, client_options
from bridge.state import RestoreStats

__all__ = ["App", "first_error", "run"]

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class App:
    """One running bridge: HTTP session, DLI client, sink, scheduler, membership, health.

    ``async with App(settings) as app: await app.run(stop)`` joins the shard group and polls
    the assigned shards until ``stop`` is set, then drains for ``polling.drain_s``, leaves
    the group and closes everything in reverse order. ``sink`` replaces the Kafka sink (tests
    pass a MemorySink; the instance then owns every shard, no group), and ``projects`` the
    configured or discovered project list.
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
        self._rediscover = projects is None and settings.projects.discover
        self._client: DliClient | None = None
        self._stack = AsyncExitStack()
        self._scheduler: Scheduler | None = None
        self._stopping = False
        self._membership: Membership | None = None
        self._held: dict[int, Held] = {}  # state of cleanly revoked shards, by shard
        self._fenced: set[int] = set()  # owned shards stopped by fencing until a new assignment

    def __repr__(self) -> str:
        return f"<App {self._scheduler!r} {self._membership!r} health={self.health_url or '-'}>"

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
        self._client = client
        sink = self._sink
        if sink is None:
            kafka = KafkaSink(settings.kafka, on_restore=self._restored)
            sink = await stack.enter_async_context(kafka)
            self._partitions = kafka.shards
            self._membership = self._member(settings)
        projects = self._projects
        if projects is None:
            projects = settings.projects.ids or await _discover(client)
            self._projects = projects
        config = PollConfig.from_settings(settings, partitions=self._partitions)
        self._scheduler = Scheduler(client, sink, config, self.metrics, projects)
        if self._sink is None:  # re-snapshot requests (dli-bridge resnapshot), issue 11
            signals = SignalReader(settings.kafka, self._scheduler.request_snapshot)
            await stack.enter_async_context(signals)
        log.info(
            "watching %d projects over %d shards, %s mode every %g s",
            len(projects),
            self._partitions,
            config.mode,
            config.interval_s,
        )

    def _member(self, settings: Settings) -> Membership:
        kafka = settings.kafka
        return Membership(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            state_topic=kafka.topics.state,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
            instance_id=kafka.instance_id,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            rebalance_timeout_ms=kafka.rebalance_timeout_ms,
            drain_s=settings.polling.drain_s,
            client_options=client_options(
                kafka,
                client_id=f"dli-bridge-member-{kafka.instance_id or ''}",
                request_timeout_s=10,
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the owned shards until ``stop`` is set; then drain, leave the group, return.

        Without a group every shard is owned; with one, shards come and go with the
        assignment (``_on_assigned`` / ``_on_revoked``).
        """
        scheduler = self.scheduler
        static = range(self._partitions) if self._membership is None else ()
        try:
            async with asyncio.TaskGroup() as group:
                polling = group.create_task(scheduler.run(static), name="scheduler")
                discovery = None
                if self._rediscover:
                    discovery = group.create_task(self._discover_loop(stop), name="discovery")
                await asyncio.sleep(0)  # the scheduler's task group is open: shards can start
                async with AsyncExitStack() as member:
                    if self._membership is not None:
                        await member.enter_async_context(self._membership)
                    await self._drain_on(stop, polling)
                if discovery is not None:
                    discovery.cancel()
        except BaseExceptionGroup as failed:
            # the user reads one error (a group that cannot be joined, a broker that is
            # gone), not a task group's traceback of it
            raise first_error(failed) from None

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

    # --- discovery ----------------------------------------------------------------------

    async def _discover_loop(self, stop: asyncio.Event) -> None:
        """List the projects again every ``polling.reconcile_interval_s`` until ``stop``."""
        loop = asyncio.get_running_loop()
        every = self.settings.polling.reconcile_interval_s
        while await wait_stop(stop, loop.time() + every):
            assert self._client is not None
            try:
                projects = await _discover(self._client)
            except ApiError as exc:
                log.warning("project discovery failed, polling the known projects: %r", exc)
                continue
            await self.watch(projects)

    async def watch(self, projects: Sequence[str]) -> None:
        """Poll ``projects`` from now on: owned shards whose projects changed restart."""
        before, after = set(self._projects or ()), set(projects)
        if before == after:
            return
        log.info(
            "projects changed: new %s, gone %s (no longer polled; no delete events)",
            sorted(after - before),
            sorted(before - after),
        )
        self._projects = sorted(after)
        scheduler = self.scheduler
        for shard in sorted(scheduler.set_projects(after)):
            if scheduler.running:
                await self._restart(shard)

    async def _restart(self, shard: int) -> None:
        """Stop ``shard`` (its cycles finish) and start it on its new projects, if still ours."""
        scheduler, membership = self.scheduler, self._membership
        runner = await scheduler.stop_shard(shard)
        if runner is None or not scheduler.running:
            return  # not ours: its owner's own discovery picks the change up
        if membership is None:
            scheduler.start_shard(shard, held=runner.held())
        elif membership.is_current(shard, runner.generation):
            scheduler.start_shard(
                shard,
                runner.generation,
                still_ours=functools.partial(membership.is_current, shard, runner.generation),
                on_fenced=self._on_fenced,
                held=runner.held(),
            )

    # --- the group's assignment ---------------------------------------------------------

    async def _on_assigned(self, shards: frozenset[int], generation: int) -> None:
        """Start the assigned shards (each fences, checks, restores in its own task)."""
        self.metrics.rebalances.inc()
        membership, scheduler = self._membership, self.scheduler
        if membership is None or not scheduler.running:
            return  # draining: the next owner takes them
        held, self._held = self._held, {}
        self._fenced -= shards
        for shard in sorted(shards):
            # a shard whose revoke overran the drain deadline must close before it reopens
            await scheduler.stop_shard(shard, revoke=True)
            scheduler.start_shard(
                shard,
                generation,
                still_ours=functools.partial(membership.is_current, shard, generation),
                on_fenced=self._on_fenced,
                held=held.get(shard),
            )

    async def _on_revoked(self, shards: frozenset[int]) -> None:
        """Stop the shards' polling (in-flight cycles commit or abort), close their producers;
        keep the state of cleanly stopped ones in case the next assignment hands them back."""
        drain_s = self.settings.polling.drain_s
        stops = [asyncio.ensure_future(self.scheduler.stop_shard(s, revoke=True)) for s in shards]
        done, pending = await asyncio.wait(stops, timeout=drain_s) if stops else (set(), set())
        if pending:
            log.warning(
                "%d revoked shards still finishing a cycle after %g s; they can no longer write",
                len(pending),
                drain_s,
            )
        for stopped in done:
            runner = stopped.result()
            held = runner.held() if runner is not None else None
            if runner is not None and held is not None:
                self._held[runner.shard] = held

    def _on_fenced(self, shard: int, generation: int) -> None:
        self.metrics.fenced_producers.inc()
        membership = self._membership
        if membership is None:
            return
        self._fenced.add(shard)
        if membership.is_current(shard, generation):
            # fenced while the group still says the shard is ours (a stale owner started after
            # us, or our transaction timed out): only a new assignment may reopen it
            log.warning("shard %d fenced in our current generation: asking for a rebalance", shard)
            membership.request_rejoin()

    def _restored(self, stats: RestoreStats) -> None:
        shard = str(stats.shard)
        self.metrics.restore_records.labels(shard).set(stats.records)
        self.metrics.restore_seconds.labels(shard).set(stats.seconds)

    # --- readiness -----------------------------------------------------------------------

    def _owned_status(self) -> dict[int, str]:
        statuses: dict[int, ShardStatus] = self.scheduler.shard_status()
        if self._membership is None:
            return dict(statuses)
        return {
            shard: statuses.get(shard) or ("fenced" if shard in self._fenced else "starting")
            for shard in self._membership.owned
        }

    def readiness(self) -> Readiness:
        """Ready when shards are assigned and every owned one is restored (/readyz)."""
        if self._scheduler is None:
            return Readiness(False, "starting")
        shards = self._owned_status()
        if self._stopping:
            return Readiness(False, "stopping", shards)
        membership = self._membership
        if membership is not None and membership.generation < 0:
            return Readiness(False, f"waiting for a shard assignment in {membership.group_id}")
        if membership is not None and not shards:
            return Readiness(True, "standby: the group assigned no shard to this instance")
        if not shards:
            return Readiness(False, "no shards owned", shards)
        waiting = sorted(shard for shard, status in shards.items() if status != "ready")
        if waiting:
            states = sorted({shards[s] for s in waiting})
            return Readiness(False, f"shards {waiting} not ready ({', '.join(states)})", shards)
        return Readiness(True, "", shards)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of a task group's failure: what the user needs to read."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def _discover(client: DliClient) -> list[str]:
    projects = sorted(p.model.id for p in await client.list_projects())
    log.debug("discovered %d projects", len(projects))
    return projects


async def run(settings: Settings) -> None:
    """Run the bridge until SIGINT or SIGTERM, then drain and return (the `run` command).

    The first signal drains (or, during start-up, cancels the start); a second one cancels
    the drain.
    """
    loop = asyncio.get_running_loop()
    logs.quiet_kafka_futures(loop)
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
