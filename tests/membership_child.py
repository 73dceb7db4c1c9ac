"""A Membership in a child process, for kill tests: reports what it owns as JSON lines.

Run as ``python -m tests.membership_child --bootstrap B --group G --topic T [--instance I]``.
Every line on stdout is one JSON object with ``event`` and ``t`` (wall-clock seconds, so the
parent can compare times across processes):

- ``joined`` once the consumer is subscribed;
- ``assigned`` / ``revoked`` with ``shards`` (and ``generation``) from the callbacks;
- ``current`` whenever the set of shards for which ``is_current(shard, generation)`` holds
  changes (checked every 20 ms), which shows how long a stopped-then-continued member still
  believes it owns shards;
- ``left`` after a clean exit on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from bridge.membership import Membership

CHECK_EVERY_S = 0.02


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


async def on_assigned(shards: frozenset[int], generation: int) -> None:
    emit("assigned", shards=sorted(shards), generation=generation)


async def on_revoked(shards: frozenset[int]) -> None:
    emit("revoked", shards=sorted(shards))


async def watch(membership: Membership, stop: asyncio.Event) -> None:
    current: frozenset[int] = frozenset()
    while not stop.is_set():
        generation = membership.generation
        now = frozenset(s for s in membership.owned if membership.is_current(s, generation))
        if now != current:
            emit("current", shards=sorted(now), generation=generation)
            current = now
        await asyncio.sleep(CHECK_EVERY_S)


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    membership = Membership(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        state_topic=args.topic,
        instance_id=args.instance,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.session_timeout_ms // 10,  # quick rebalances
        rebalance_timeout_ms=args.rebalance_timeout_ms,
        on_assigned=on_assigned,
        on_revoked=on_revoked,
    )
    async with membership:
        emit("joined")
        await watch(membership, stop)
    emit("left")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="membership_child")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--instance")
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    parser.add_argument("--rebalance-timeout-ms", type=int, default=10000)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
