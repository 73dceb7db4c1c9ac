"""Consumer-group membership on the state topic: Kafka's assignment becomes the shards we own.

Every instance joins one consumer group subscribed to the state topic; the partitions Kafka
assigns it are the shards it polls and the state it restores. The member never reads a record:
its partitions are paused as soon as they arrive, and a ``getmany`` loop keeps it alive.

What aiokafka 0.14 does, checked in its source (``consumer/group_coordinator.py``):

- ``on_partitions_revoked`` runs in ``_on_join_prepare`` and is awaited before the JoinGroup;
  the heartbeat task is stopped only after it returns (``ensure_active_group``), and a
  heartbeat answered REBALANCE_IN_PROGRESS still counts as a success, so the member stays in
  the group while the callback drains — up to ``rebalance_timeout_ms``, which the broker
  enforces on the JoinGroup.
- ``on_partitions_assigned`` runs in ``_on_join_complete`` *before* ``_start_heartbeat_task``:
  no heartbeats while it runs. We only record the assignment there and start a task.
- The group generation is ``GroupCoordinator.generation``: set from the JoinGroup answer,
  restored after SyncGroup, reset to -1 when a heartbeat is answered UNKNOWN_MEMBER_ID or
  ILLEGAL_GENERATION (the session expired: another member owns our shards now).
- The member leaves after ``max_poll_interval_ms`` without a fetch in progress
  (``fetcher_idle_time``); ``getmany`` counts as one while it waits, paused partitions or not.
- ``on_partitions_revoked`` is not called by ``AIOKafkaConsumer.stop()``: we revoke ourselves.
- With ``group_instance_id`` (static membership) ``_maybe_leave_group`` sends no LeaveGroup:
  the broker keeps the member's partitions for it until the session times out.
- JoinGroup uses the client's ``request_timeout_ms``; the broker may hold it for the whole
  rebalance timeout, so the request timeout must be longer (as the Java client does).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as kafka_errors

from bridge.errors import ConfigError, MembershipError

__all__ = ["Membership", "OnAssigned", "OnRevoked"]

log = logging.getLogger(__name__)

OnAssigned = Callable[[frozenset[int], int], Awaitable[None]]
OnRevoked = Callable[[frozenset[int]], Awaitable[None]]

NO_GENERATION = -1
DEFAULT_TOPIC_WAIT_S = 60.0
# How long the keep-alive poll waits. It returns no records (every partition is paused); a
# rebalance runs in aiokafka's own coordination task, so this only bounds how late a fatal
# group error (authorization, a dead coordinator routine) surfaces. Each return wakes the
# process: at 1 s it was a tenth of an idle instance's CPU.
POLL_TIMEOUT_MS = 10000
ERROR_BACKOFF_S = 1.0
# JoinGroup may wait the whole rebalance timeout on the broker; answer time on top
JOIN_MARGIN_MS = 5000
DEFAULT_REQUEST_TIMEOUT_MS = 40000

# the group will not have us, whatever we retry
_FATAL = (
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.InvalidSessionTimeoutError,
    kafka_errors.InconsistentGroupProtocolError,
    kafka_errors.InvalidGroupIdError,
)


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def default_heartbeat_ms(session_timeout_ms: int) -> int:
    """A third of the session (Kafka's advice, the Java client's ratio), between 100 ms and
    Kafka's default of 3 s: with the default 10 s session, 3 s.

    Members learn of a rebalance at their next heartbeat, so it bounds how long a joining
    instance waits; each one wakes every idle instance (a tenth of a session cost an idle
    instance about a third of its CPU). ``kafka.heartbeat_interval_ms`` overrides it.
    """
    return max(100, min(3000, session_timeout_ms // 3))


class Membership:
    """One member of the shard group: owns the shards Kafka assigns to it.

    ``on_revoked(shards)`` is awaited inside the rebalance (bounded by the rebalance
    timeout): when it returns, those shards must have stopped writing. It receives every shard
    of the revoked assignment, including shards whose ``on_assigned`` was cancelled half-way.
    ``on_assigned(shards, generation)`` runs in a task of its own (the restore), so heartbeats
    go on; a revoke cancels it if it is still running. An exception escaping it is a bug of the
    caller and ends the membership (the task group re-raises it from ``__aexit__``).

    Lifecycle: ``async with Membership(...)`` starts the consumer, waits for the state topic's
    metadata, subscribes and returns at once (the assignment arrives later); leaving revokes
    what is owned, then stops the consumer (a dynamic member sends LeaveGroup; a static one is
    kept by the broker until its session times out).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        state_topic: str,
        on_assigned: OnAssigned,
        on_revoked: OnRevoked,
        instance_id: str | None = None,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int | None = None,
        rebalance_timeout_ms: int = 30000,
        drain_s: float = 0.0,
        client_options: Mapping[str, Any] | None = None,
        topic_wait_s: float = DEFAULT_TOPIC_WAIT_S,
    ) -> None:
        if rebalance_timeout_ms <= drain_s * 1000:
            raise ConfigError(
                "kafka.rebalance_timeout_ms must exceed the drain deadline",
                [f"rebalance_timeout_ms={rebalance_timeout_ms} <= drain_s={drain_s:g} s"],
            )
        heartbeat_ms = heartbeat_interval_ms or default_heartbeat_ms(session_timeout_ms)
        if heartbeat_ms >= session_timeout_ms:
            raise ConfigError(
                "kafka.heartbeat_interval_ms must be below the session timeout",
                [f"heartbeat_interval_ms={heartbeat_ms} >= {session_timeout_ms}"],
            )
        self.group_id = group_id
        self.instance_id = instance_id
        self.state_topic = state_topic
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._rebalance_timeout_s = rebalance_timeout_ms / 1000
        self._topic_wait_s = topic_wait_s
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            **(client_options or {}),
            "group_id": group_id,
            "group_instance_id": instance_id,
            "session_timeout_ms": session_timeout_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms,
            "heartbeat_interval_ms": heartbeat_ms,
            "request_timeout_ms": max(
                DEFAULT_REQUEST_TIMEOUT_MS, rebalance_timeout_ms + JOIN_MARGIN_MS
            ),
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            # never needed: the partitions are paused; if a fetch slips in, keep it tiny
            "auto_offset_reset": "latest",
            "max_partition_fetch_bytes": 1024,
            "fetch_max_bytes": 1024,
            "max_poll_records": 1,
            # aiokafka's fetch routine wakes this often to look for work even when every
            # partition is paused (10 wake-ups a second per instance at its 200 ms default);
            # assignments and resumes wake it at once anyway
            "consumer_timeout_ms": 30000,
        }
        self._state = _State.UNOPENED
        self._consumer: Any = None
        self._tasks: asyncio.TaskGroup | None = None
        self._assigning: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._revoke_lock = asyncio.Lock()
        self._owned: frozenset[int] = frozenset()
        self._generation = NO_GENERATION
        self._restored = False
        self.rebalances = 0

    # --- what the app reads

    @property
    def owned(self) -> frozenset[int]:
        """The shards assigned to this member now (empty from the start of a revoke)."""
        return self._owned

    @property
    def generation(self) -> int:
        """The group generation of the current assignment; -1 before the first and in a revoke."""
        return self._generation

    @property
    def ready(self) -> bool:
        """Shards are assigned and ``on_assigned`` for them has finished."""
        return bool(self._owned) and self._restored

    def is_current(self, shard: int, generation: int) -> bool:
        """Whether ``shard`` is still ours in ``generation``.

        False as soon as a revoke starts, a newer assignment arrived, or the coordinator
        dropped our membership (a heartbeat found the session expired) — the check a shard
        makes after its producer's ``start()`` to close the stale-owner hole.
        """
        return (
            shard in self._owned
            and generation == self._generation
            and self._live_generation() == generation
        )

    def request_rejoin(self) -> None:
        """Ask the coordinator for a new generation (a fenced shard waits for one).

        The member rejoins at its next poll: everything is revoked, then assigned anew.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and self._state is _State.OPEN:
            coordinator.request_rejoin()

    def _live_generation(self) -> int:
        coordinator = getattr(self._consumer, "_coordinator", None)
        return NO_GENERATION if coordinator is None else int(coordinator.generation)

    def __repr__(self) -> str:
        return (
            f"<Membership group={self.group_id!r} instance={self.instance_id!r} "
            f"state={self._state.value} generation={self._generation} "
            f"owned={sorted(self._owned)} rebalances={self.rebalances}>"
        )

    # --- lifecycle

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"{self!r} cannot be opened twice")
        self._state = _State.OPEN
        self._consumer = AIOKafkaConsumer(**self._consumer_options)
        try:
            await self._start_consumer()
            self._consumer.subscribe([self.state_topic], listener=_Listener(self))
        except BaseException:
            await self._consumer.stop()
            self._state = _State.CLOSED
            raise
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._keeper = self._tasks.create_task(
            self._keep_alive(), name=f"membership-{self.group_id}"
        )
        log.info("joining group %s on %s as %s", self.group_id, self.state_topic, self.instance_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        self._state = _State.CLOSED
        try:
            await self._revoke()  # stop() does not call on_partitions_revoked
            await self._consumer.stop()
            log.info("left group %s", self.group_id)
        finally:
            if self._keeper is not None:
                self._keeper.cancel()
            await self._tasks.__aexit__(exc_type, exc, tb)

    async def _start_consumer(self) -> None:
        try:
            await self._consumer.start()
            await self._wait_for_topic()
        except kafka_errors.KafkaError as exc:
            raise MembershipError(f"cannot join group {self.group_id}: {exc!r}") from exc

    async def _wait_for_topic(self) -> None:
        # A consumer subscribing right after the topic was created can see no partitions
        # until the next metadata refresh (metadata_max_age_ms, 5 minutes): wait until the
        # client's own metadata has the topic, as AIOKafkaConsumer.start() does for topics
        # given to it. First ask for *all* topics: a Metadata request naming a missing topic
        # auto-creates it on brokers with auto.create.topics.enable (the default), and a
        # one-partition, uncompacted state topic would be worse than none.
        client = self._consumer._client  # private: the same call start() makes
        try:
            async with asyncio.timeout(self._topic_wait_s):
                while True:
                    if self.state_topic in await self._consumer.topics():
                        break
                    await asyncio.sleep(ERROR_BACKOFF_S)
                await client._wait_on_metadata(self.state_topic)
        except (TimeoutError, kafka_errors.UnknownTopicOrPartitionError):
            raise ConfigError(
                f"state topic {self.state_topic!r} not found",
                [f"no metadata for it within {self._topic_wait_s:g} s; create it first"],
            ) from None

    async def _keep_alive(self) -> None:
        """Poll so the coordinator keeps us; surface its errors (getmany raises them)."""
        while True:
            try:
                await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            except kafka_errors.ConsumerStoppedError:
                return
            except _FATAL as exc:
                raise MembershipError(f"group {self.group_id} refused us: {exc!r}") from exc
            except kafka_errors.KafkaError as exc:
                # the coordination routine died: nothing will ever rejoin for us
                if self._consumer._coordinator._coordination_task.done():
                    raise MembershipError(f"group {self.group_id}: {exc!r}") from exc
                log.warning("group %s: %r; still a member, retrying", self.group_id, exc)
                await asyncio.sleep(ERROR_BACKOFF_S)

    # --- the rebalance, called from the listener

    def _assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Record the new assignment and start ``on_assigned``; no await: heartbeats wait."""
        tps = [tp for tp in partitions if tp.topic == self.state_topic]
        self._consumer.pause(*tps)
        if self._tasks is None or self._state is not _State.OPEN:
            return  # leaving: a late assignment between our revoke and stop() is not ours
        self._owned = frozenset(tp.partition for tp in tps)
        self._generation = self._live_generation()
        self._restored = False
        self.rebalances += 1
        log.info(
            "group %s generation %d: assigned shards %s",
            self.group_id,
            self._generation,
            sorted(self._owned),
        )
        self._assigning = self._tasks.create_task(
            self._run_assigned(self._owned, self._generation),
            name=f"assigned-{self.group_id}-{self._generation}",
        )

    async def _run_assigned(self, shards: frozenset[int], generation: int) -> None:
        try:
            await self._on_assigned(shards, generation)
        except Exception:
            log.exception("on_assigned(%s, %d) failed", sorted(shards), generation)
            raise
        if generation == self._generation:
            self._restored = True
            log.info("group %s generation %d: shards ready", self.group_id, generation)
            await self._keep_group(shards)

    async def _keep_group(self, shards: frozenset[int]) -> None:
        """Commit an offset for our shards, so Kafka keeps the group while all are down.

        A group with no committed offsets is deleted as soon as its last member leaves, and
        its generation count starts again at 1 (state records carry the generation). With
        offsets it lives on for the broker's offsets retention (7 days by default). The
        offsets themselves are never read: restores always start at the beginning.
        """
        offsets = {TopicPartition(self.state_topic, shard): 0 for shard in shards}
        try:
            async with asyncio.timeout(self._rebalance_timeout_s):
                await self._consumer.commit(offsets)
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            # a rebalance under way: the next assignment commits
            log.debug("group %s: offset commit skipped (%r)", self.group_id, exc)

    async def _revoke(self) -> None:
        """Stop a running ``on_assigned``, then hand back every owned shard."""
        async with self._revoke_lock:
            shards, self._owned = self._owned, frozenset()
            self._generation, self._restored = NO_GENERATION, False
            await self._cancel_assigning()
            if not shards:
                return
            log.info("group %s: revoking shards %s", self.group_id, sorted(shards))
            try:
                async with asyncio.timeout(self._rebalance_timeout_s):
                    await self._on_revoked(shards)
            except TimeoutError:
                log.error(
                    "on_revoked(%s) overran the rebalance timeout; the broker has dropped us",
                    sorted(shards),
                )
            except Exception:
                log.exception("on_revoked(%s) failed", sorted(shards))

    async def _cancel_assigning(self) -> None:
        task, self._assigning = self._assigning, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, membership: Membership) -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._membership._revoke()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._membership._assigned(assigned)
