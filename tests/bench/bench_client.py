"""Client overhead: a bare aiohttp loop vs DliClient.get_job against the simulator (own process).

Run: python tests/bench/bench_client.py [--requests N] [--concurrency C] [--rounds R]
Prints requests/s and this process's CPU time per request for both, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

import aiohttp
import orjson

from bridge.auth import NoAuth
from bridge.client import DliClient, new_session
from bridge.settings import ApiSettings
from bridge.simulator import Simulator, SimulatorConfig

Target = tuple[str, int]


def _serve(conn: Connection, projects: int, jobs: int) -> None:
    """Child process: run the simulator until the parent says stop."""

    async def main() -> None:
        sim = Simulator(SimulatorConfig(projects=projects, jobs_per_project=jobs, seed=0))
        async with sim.serve() as base_url:
            conn.send(str(base_url))
            await asyncio.to_thread(conn.recv)

    asyncio.run(main())


@dataclass
class Figures:
    name: str
    requests: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        rate = self.requests / self.wall_s
        cpu_us = self.cpu_s / self.requests * 1e6
        return (
            f"{self.name:<18} {self.requests:>7} req  {rate:>9.0f} req/s  {cpu_us:>7.1f} µs CPU/req"
        )


async def _drive(
    name: str, targets: list[Target], n: int, c: int, one: Callable[[Target], Awaitable[None]]
) -> Figures:
    feed: Iterator[Target] = itertools.islice(itertools.cycle(targets), n)

    async def worker() -> None:
        for target in feed:
            await one(target)

    wall, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as tg:
        for _ in range(c):
            tg.create_task(worker())
    return Figures(name, n, time.perf_counter() - wall, time.process_time() - cpu)


async def _bare(base_url: str, targets: list[Target], n: int, c: int) -> Figures:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(target: Target) -> None:
            pid, job_id = target
            url = f"{base_url}/v1.0/{pid}/streaming/jobs/{job_id}"
            async with session.get(url) as response:
                orjson.loads(await response.read())

        return await _drive("bare aiohttp", targets, n, c, one)


def _settings(base_url: str, c: int) -> ApiSettings:
    # Limits far above what one process can do, so the figures show overhead, not pacing.
    return ApiSettings(
        endpoint=base_url,
        iam_endpoint=base_url,
        max_in_flight=c,
        project_rate_per_s=1e9,
        project_burst=10**9,
        credential_rate_per_s=1e9,
        credential_burst=10**9,
    )


async def _client(
    base_url: str, targets: list[Target], n: int, c: int, *, raw: bool = False
) -> Figures:
    """``get_job`` (parsed and validated), or with ``raw`` the engine's ``get_job_body``."""
    async with (
        new_session() as session,
        DliClient(_settings(base_url, c), NoAuth(), session) as client,
    ):
        call = client.get_job_body if raw else client.get_job

        async def one(target: Target) -> None:
            await call(*target)

        name = "DliClient.get_job_body" if raw else "DliClient.get_job"
        return await _drive(name, targets, n, c, one)


async def _targets(base_url: str) -> list[Target]:
    async with (
        new_session() as session,
        DliClient(_settings(base_url, 8), NoAuth(), session) as client,
    ):
        projects = await client.list_projects()
        return [
            (p.model.id, row.model.job_id)
            for p in projects
            for row in await client.list_jobs(p.model.id)
        ]


async def _bench(base_url: str, n: int, c: int, rounds: int) -> None:
    targets = await _targets(base_url)
    print(f"simulator {base_url}: {len(targets)} jobs; N={n} C={c}, {rounds} rounds")
    await _bare(base_url, targets, min(n, 500), c)  # warm-up: connections, caches
    await _client(base_url, targets, min(n, 500), c)
    for _ in range(rounds):
        print((await _bare(base_url, targets, n, c)).line())
        print((await _client(base_url, targets, n, c)).line())
        print((await _client(base_url, targets, n, c, raw=True)).line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--projects", type=int, default=5)
    parser.add_argument("--jobs-per-project", type=int, default=40)
    args = parser.parse_args()
    parent, child = mp.get_context("spawn").Pipe()
    server = mp.get_context("spawn").Process(
        target=_serve, args=(child, args.projects, args.jobs_per_project), daemon=True
    )
    server.start()
    try:
        base_url = parent.recv()
        asyncio.run(_bench(base_url, args.requests, args.concurrency, args.rounds))
    finally:
        parent.send("stop")
        server.join(timeout=10)


if __name__ == "__main__":
    main()
