"""Restart and restore: how long a bridge killed with SIGKILL takes to be back at work.

For each size, a simulator of ``size / --jobs-per-project`` projects (no changes, so nothing
but the restart is measured) and one bridge in `list` mode. Once it has discovered every job,
it is killed with SIGKILL and a new process with the same configuration is started, twice:
- as a dynamic group member: the group waits for the dead member's session to expire
  (`kafka.session_timeout_ms`) before it hands the shards over;
- as a static member (`kafka.instance_id`, the same on both processes): the new process takes
  the dead one's place at once.

Per restart it prints the time from the new process's start to /readyz (every shard fenced
and restored), the slowest shard's open (fence, check, restore:
`dli_bridge_restore_seconds`), the state records restored, the resident memory after the
restore, and the `discovered` and `created` events the new process published once it had
swept every project (0 and 0 when the restore brought every job back).

Run: python tests/bench/bench_restore.py [--sizes 10000 100000] [--jobs-per-project 200]
     [--bootstrap-servers HOST:PORT]
Without --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) a local Kafka broker is started.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiohttp

from bridge.bench import kafka as benchkafka
from bridge.bench.harness import kafka_at
from bridge.bench.run import BridgeChild, BridgeSpec, simulator

_DISCOVERED = 'dli_bridge_events_total{type="discovered"}'
_CREATED = 'dli_bridge_events_total{type="created"}'
_SECONDS = "dli_bridge_restore_seconds"
_RECORDS = "dli_bridge_restore_records"
_POLLS = 'dli_bridge_polls_total{mode="list",outcome="ok"}'
_PARTITIONS = 12
_INTERVAL_S = 30.0


def _per_shard(metrics: dict[str, float], name: str) -> list[float]:
    """The values of a gauge labelled by shard."""
    return [v for k, v in metrics.items() if k.startswith(f"{name}{{")]


async def _restart(
    spec: BridgeSpec, session: aiohttp.ClientSession, projects: int
) -> tuple[float, float, float, float, float, float]:
    """Start ``spec`` again after its previous process was killed; its figures."""
    started = time.monotonic()
    async with BridgeChild(spec, session) as child:
        ready_s = time.monotonic() - started
        metrics = await child.metrics()
        rss_mb = child.sample().rss_bytes / 2**20
        # every project swept once more (a cycle begins within one interval of the restore)
        await child.until(_POLLS, projects, 2 * _INTERVAL_S + 30)
        after = await child.metrics()
        figures = (
            ready_s,
            max(_per_shard(metrics, _SECONDS), default=0.0),
            sum(_per_shard(metrics, _RECORDS)),
            rss_mb,
            after.get(_DISCOVERED, 0.0),
            after.get(_CREATED, 0.0),
        )
        await child.kill()
    return figures


async def _size(
    jobs: int, per_project: int, bootstrap: str, session: aiohttp.ClientSession
) -> list[str]:
    projects = max(1, jobs // per_project)
    rows = []
    async with simulator(projects, per_project, 0.0) as (url, _pid):
        async with session.get(f"{url}/v3/projects") as response:
            ids = [p["id"] for p in (await response.json())["projects"]]
        for static in (False, True):
            name = f"{uuid.uuid4().hex[:8]}-restore"
            spec = BridgeSpec(
                name=name,
                mode="list",
                endpoint=url,
                bootstrap_servers=bootstrap,
                projects=ids,
                interval_s=_INTERVAL_S,
                jitter_s=0.0,
                partitions=_PARTITIONS,
                instance_id=f"{name}-0" if static else None,
            )
            await benchkafka.create_events_topic(bootstrap, spec.topic("events"), _PARTITIONS)
            async with BridgeChild(spec, session) as first:
                # counted once committed: every job is in the state topic
                await first.until(_DISCOVERED, projects * per_project, 120 + jobs / 500)
                await first.kill()
            ready, slowest, records, rss, discovered, created = await _restart(
                spec, session, projects
            )
            member = "static" if static else "dynamic"
            rows.append(
                f"{projects * per_project:>8,} {member:>8} {ready:>9.1f} {slowest:>12.2f} "
                f"{records:>9,.0f} {rss:>8.1f} {discovered:>11.0f} {created:>8.0f}"
            )
    return rows


async def main(args: argparse.Namespace) -> None:
    async with kafka_at(args.bootstrap_servers, print) as bootstrap, aiohttp.ClientSession() as s:
        rows = []
        for size in args.sizes:
            print(f"  {size:,} jobs…", flush=True)
            rows += await _size(size, args.jobs_per_project, bootstrap, s)
    print(f"list mode, {_INTERVAL_S:g} s interval, {_PARTITIONS} shards, SIGKILL then restart")
    print("    jobs   member  ready s  slowest shard  records   RSS MB  rediscovered  created")
    for row in rows:
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--jobs-per-project", type=int, default=200)
    parser.add_argument("--bootstrap-servers")
    asyncio.run(main(parser.parse_args()))
