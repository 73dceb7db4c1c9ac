"""Long detail cycles: how long a found change waits for the rest of its cycle.

One project of ``--jobs`` jobs in detail mode, paced at ``--rate`` calls a second (a cycle of
jobs / rate seconds), polled every ``--interval-s``, while the simulator changes
``--changes-per-s`` jobs a second. One bridge per ``--flush`` value (`polling.flush_after_s`)
watches it, side by side. After their first (discovery) cycle, over ``--window-s``, each
reports from its own metrics the wait of the changes it wrote, from the detail call that saw
each to the commit (`dli_bridge_change_to_commit_seconds`), its transactions and its CPU.

Run: python tests/bench/bench_long_cycles.py [--jobs 1000] [--rate 100] [--interval-s 15]
     [--changes-per-s 2] [--window-s 90] [--flush 1000 0.1] [--bootstrap-servers HOST:PORT]
Without --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) a local Kafka broker is started.
A --flush value longer than the cycle is the old behaviour: everything waits for the last call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

import aiohttp

from bridge.bench import kafka as benchkafka
from bridge.bench.harness import kafka_at
from bridge.bench.run import BridgeChild, BridgeSpec, simulator

_WAIT = "dli_bridge_change_to_commit_seconds"
_COMMITTED = 'dli_bridge_transactions_total{outcome="committed"}'
_DISCOVERED = 'dli_bridge_events_total{type="discovered"}'


def _quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """The upper bound of the histogram bucket holding quantile ``q`` (cumulative counts)."""
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def _buckets(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    out = []
    for key, value in after.items():
        if key.startswith(f"{_WAIT}_bucket{{"):
            bound = float(key.split('le="', 1)[1].rstrip('"}'))
            out.append((bound, value - before.get(key, 0.0)))
    return sorted(out)


def _row(
    flush: float, before: dict[str, float], after: dict[str, float], cpu_s: float, window_s: float
) -> str:
    buckets = _buckets(before, after)
    count = after[f"{_WAIT}_count"] - before[f"{_WAIT}_count"]
    mean_ms = (after[f"{_WAIT}_sum"] - before[f"{_WAIT}_sum"]) / max(1.0, count) * 1000
    txns = after[_COMMITTED] - before[_COMMITTED]
    p50, p99 = (_quantile(buckets, q) * 1000 for q in (0.5, 0.99))
    return (
        f"{flush:>14g} {count:>9.0f} {mean_ms:>10.0f} {p50:>10.0f} {p99:>10.0f} "
        f"{txns:>8.0f} {cpu_s / window_s * 1000:>12.1f}"
    )


async def main(args: argparse.Namespace) -> None:
    async with (
        kafka_at(args.bootstrap_servers, print) as bootstrap,
        simulator(1, args.jobs, args.changes_per_s) as (url, _pid),
        aiohttp.ClientSession() as session,
        contextlib.AsyncExitStack() as stack,
    ):
        async with session.get(f"{url}/v3/projects") as response:
            projects = [p["id"] for p in (await response.json())["projects"]]
        children = []
        for flush in args.flush:
            spec = BridgeSpec(
                name=f"{uuid.uuid4().hex[:8]}-flush",
                mode="detail",
                endpoint=url,
                bootstrap_servers=bootstrap,
                projects=projects,
                interval_s=args.interval_s,
                jitter_s=0.0,
                partitions=1,
                project_rate_per_s=args.rate,
                flush_after_s=flush,
            )
            await benchkafka.create_events_topic(bootstrap, spec.topic("events"), 1)
            children.append(await stack.enter_async_context(BridgeChild(spec, session)))
        limit = 60 + 2 * args.jobs / args.rate
        await asyncio.gather(*(c.until(_DISCOVERED, args.jobs - 5, limit) for c in children))
        await asyncio.sleep(args.jobs / args.rate)  # the discovery cycles' last writes
        before = [await child.metrics() for child in children]
        cpu = [child.sample().cpu_s for child in children]
        started = time.monotonic()
        await asyncio.sleep(args.window_s)
        window = time.monotonic() - started
        after = [await child.metrics() for child in children]
        spent = [child.sample().cpu_s - c for child, c in zip(children, cpu, strict=True)]
    cycle_s = args.jobs / args.rate
    print(
        f"1 project x {args.jobs} jobs, detail mode, {args.rate:g} calls/s (a {cycle_s:g} s "
        f"cycle), every {args.interval_s:g} s, {args.changes_per_s:g} changes/s, "
        f"window {window:.0f} s"
    )
    print("flush_after_s   changes    mean ms  p50 ≤ ms   p99 ≤ ms     txns   CPU ms/s")
    for flush, b, a, s in zip(args.flush, before, after, spent, strict=True):
        print(_row(flush, b, a, s, window))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="detail calls/s")
    parser.add_argument("--interval-s", type=float, default=15.0)
    parser.add_argument("--changes-per-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=90.0)
    parser.add_argument("--flush", type=float, nargs="+", default=[1000.0, 0.1])
    parser.add_argument("--bootstrap-servers")
    asyncio.run(main(parser.parse_args()))
