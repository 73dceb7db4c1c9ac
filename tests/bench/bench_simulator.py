"""Simulator at benchmark scale: start-up time, memory, list pages/s and details/s.

Run: python tests/bench/bench_simulator.py [--projects 500] [--jobs-per-project 200]
         [--seconds 5] [--concurrency 16]
Starts `dli-bridge simulate` in its own process, reads its start-up time (launch to the
"simulator:" line) and RSS from /proc, then drives it from a separate client process for each
request kind and prints requests/s and the simulator's CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

_TICKS = os.sysconf("SC_CLK_TCK")
# (name, show_detail, detail call)
_KINDS = (("list light", "false", False), ("list detail", "true", False), ("detail", "", True))


@dataclass
class ServerStats:
    rss_mb: float
    peak_rss_mb: float
    cpu_s: float


def _server_stats(pid: int) -> ServerStats:
    proc = Path(f"/proc/{pid}")
    lines = (proc / "status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    return ServerStats(
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        peak_rss_mb=int(status["VmHWM"].split()[0]) / 1024,
        cpu_s=cpu_s,
    )


# --- client process ------------------------------------------------------------------------------


async def _targets(session: aiohttp.ClientSession, base: str) -> list[tuple[str, list[int]]]:
    """Every project and the ids of its newest 100 jobs (for detail calls)."""
    async with session.get(f"{base}/v3/auth/projects") as resp:
        projects = [p["id"] for p in orjson.loads(await resp.read())["projects"]]
    targets = []
    for pid in projects:
        url = f"{base}/v1.0/{pid}/streaming/jobs"
        async with session.get(url, params={"limit": "100"}) as resp:
            jobs = orjson.loads(await resp.read())["job_list"]["jobs"]
        targets.append((pid, [j["job_id"] for j in jobs]))
    return targets


async def _one(
    session: aiohttp.ClientSession,
    base: str,
    target: tuple[str, list[int]],
    kind: tuple[str, str, bool],
) -> int:
    pid, job_ids = target
    _, show_detail, is_detail = kind
    if is_detail:
        url, params = f"{base}/v1.0/{pid}/streaming/jobs/{random.choice(job_ids)}", None
    else:
        offset = random.choice((0, 100))
        params = {"limit": "100", "offset": str(offset), "show_detail": show_detail}
        url = f"{base}/v1.0/{pid}/streaming/jobs"
    async with session.get(url, params=params) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {body[:200]!r}")
        return len(body)


async def _phase(
    base: str, kind: tuple[str, str, bool], seconds: float, concurrency: int
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        targets = await _targets(session, base)
        done, size = 0, 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, size
            while time.perf_counter() < deadline:
                answered = await _one(session, base, random.choice(targets), kind)
                size, done = size + answered, done + 1

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        wall = time.perf_counter() - start
    return {"requests": done, "wall_s": wall, "bytes": size}


def _client_main(base: str, kind_name: str, seconds: float, concurrency: int) -> None:
    kind = next(k for k in _KINDS if k[0] == kind_name)
    print(json.dumps(asyncio.run(_phase(base, kind, seconds, concurrency))), flush=True)


# --- orchestrating process ------------------------------------------------------------------------


def _start_simulator(projects: int, jobs: int) -> tuple[subprocess.Popen[str], str, float]:
    command = [
        sys.executable, "-m", "bridge", "--log-level", "WARNING", "simulate", "--port", "0",
        "--projects", str(projects), "--jobs-per-project", str(jobs),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ready_s = time.perf_counter() - started
    if not line.startswith("simulator: "):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.split(" ", 1)[1].strip(), ready_s


def _run_client(base: str, kind: str, seconds: float, concurrency: int) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--client", base, "--kind", kind,
        "--seconds", str(seconds), "--concurrency", str(concurrency),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--jobs-per-project", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _client_main(args.client, args.kind, args.seconds, args.concurrency)
        return
    proc, base, ready_s = _start_simulator(args.projects, args.jobs_per_project)
    try:
        idle = _server_stats(proc.pid)
        jobs = args.projects * args.jobs_per_project
        print(f"simulator: {args.projects} projects x {args.jobs_per_project} jobs = {jobs} jobs")
        print(f"start-up (launch to ready): {ready_s:.2f} s")
        print(f"RSS after start-up: {idle.rss_mb:.0f} MiB (peak {idle.peak_rss_mb:.0f} MiB)")
        for kind, _, _ in _KINDS:
            before = _server_stats(proc.pid)
            result = _run_client(base, kind, args.seconds, args.concurrency)
            after = _server_stats(proc.pid)
            rate = result["requests"] / result["wall_s"]
            cpu_us = (after.cpu_s - before.cpu_s) / max(1, result["requests"]) * 1e6
            avg_kb = result["bytes"] / max(1, result["requests"]) / 1024
            print(
                f"{kind:<12} {rate:>8.0f} req/s  {result['requests']:>7} req  "
                f"{avg_kb:>6.1f} KiB/answer  simulator {cpu_us:>6.0f} µs CPU/req"
            )
        final = _server_stats(proc.pid)
        print(f"RSS at the end: {final.rss_mb:.0f} MiB (peak {final.peak_rss_mb:.0f} MiB)")
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        print(f"simulator exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
