"""The two reference loops the bridge is measured against, each in a process of its own.

- the **bare loop**: aiohttp GET of a job's detail + ``orjson.loads``, at the bridge's
  concurrency, no diff, no Kafka — the floor of what polling costs in Python;
- the **bare loop on the bridge's schedule**: the same GET + ``orjson.loads``, but paced like
  the bridge in ``detail`` mode — every ``interval_s`` each project's jobs in one burst, at most
  a project's share of the concurrency at once, projects spread over the interval. The same
  requests at the same rate as the bridge: the floor for its work. (Flat out, requests come
  back to back and share syscalls and wake-ups; at 200 requests/s each pays its own, which on
  this kind of VM costs two to four times as much CPU per request.)
- the **SDK loop**: Huawei's official ``huaweicloudsdkdli`` ``show_flink_job`` on a thread
  pool of the same size — what a user would script instead (it signs every request with
  AK/SK; the simulator, started without credentials, accepts the signature unchecked);
- the **SDK loop on the bridge's schedule**: the same calls on the same thread pool, handed
  out on the paced loop's schedule — what that script costs at the bridge's polling rate.

Each loop runs for a fixed time after a short warm-up and reports its own process CPU time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopFigures", "Schedule", "Target", "run_loop"]

log = logging.getLogger(__name__)

Target = tuple[str, int]  # (project_id, job_id)
WARM_UP_S = 0.5
# Any AK/SK will do: the simulator runs without credentials and checks no signature.
_SDK_AK, _SDK_SK = "BENCHAK0000000000001", "bench-secret-key"


@dataclass(frozen=True, slots=True)
class LoopFigures:
    """What one loop did in its measured window."""

    name: str
    requests: int
    errors: int
    wall_s: float
    cpu_s: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """How the bridge paces detail calls: every ``interval_s`` a project's jobs, at most
    ``per_project`` of them in flight."""

    interval_s: float
    per_project: int


async def run_loop(
    kind: str,
    base_url: str,
    targets: Sequence[Target],
    concurrency: int,
    duration_s: float,
    schedule: Schedule | None = None,
) -> LoopFigures:
    """Run the ``bare``, ``paced``, ``sdk`` or ``sdk_paced`` loop in a fresh (spawned)
    process; its figures."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        loop = asyncio.get_running_loop()
        args = (kind, base_url, list(targets), concurrency, duration_s, schedule)
        return await loop.run_in_executor(pool, _in_child, *args)


def _in_child(
    kind: str,
    base_url: str,
    targets: list[Target],
    concurrency: int,
    duration_s: float,
    schedule: Schedule | None,
) -> LoopFigures:
    if kind == "bare":
        run = _bare_runner(base_url, targets, concurrency)
    elif kind == "paced":
        assert schedule is not None
        run = _paced_runner(base_url, targets, concurrency, schedule)
    elif kind == "sdk_paced":
        assert schedule is not None
        run = _sdk_paced_runner(base_url, targets, concurrency, schedule)
    else:
        run = _sdk_runner(base_url, targets, concurrency)
    run(WARM_UP_S)
    wall, cpu = time.perf_counter(), time.process_time()
    done, errors = run(duration_s)
    return LoopFigures(kind, done, errors, time.perf_counter() - wall, time.process_time() - cpu)


Runner = Callable[[float], tuple[int, int]]  # seconds -> (requests, errors)


def _bare_runner(base_url: str, targets: list[Target], concurrency: int) -> Runner:
    def run(seconds: float) -> tuple[int, int]:
        return asyncio.run(_bare(base_url, targets, concurrency, seconds))

    return run


async def _bare(
    base_url: str, targets: list[Target], concurrency: int, seconds: float
) -> tuple[int, int]:
    import aiohttp
    import orjson

    feed = itertools.cycle(targets)
    counts = [0, 0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while loop.time() < deadline:
                project_id, job_id = next(feed)
                url = f"{base_url}/v1.0/{project_id}/streaming/jobs/{job_id}"
                async with session.get(url) as response:
                    body = await response.read()
                    counts[response.status != 200] += 1
                orjson.loads(body)

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return counts[0], counts[1]


def _paced_runner(
    base_url: str, targets: list[Target], concurrency: int, schedule: Schedule
) -> Runner:
    def run(seconds: float) -> tuple[int, int]:
        return asyncio.run(_paced(base_url, targets, concurrency, schedule, seconds))

    return run


async def _paced(
    base_url: str, targets: list[Target], concurrency: int, schedule: Schedule, seconds: float
) -> tuple[int, int]:
    import aiohttp
    import orjson

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch(project_id: str, job_id: int) -> bool:
            url = f"{base_url}/v1.0/{project_id}/streaming/jobs/{job_id}"
            async with session.get(url) as response:
                body = await response.read()
            orjson.loads(body)
            return response.status == 200

        return await _on_schedule(targets, concurrency, schedule, seconds, fetch)


Fetch = Callable[[str, int], Awaitable[bool]]  # (project_id, job_id) -> answered 200


async def _on_schedule(
    targets: list[Target], concurrency: int, schedule: Schedule, seconds: float, fetch: Fetch
) -> tuple[int, int]:
    """``fetch`` every job as the bridge paces detail mode; (answered, errors)."""
    by_project: dict[str, list[int]] = {}
    for project_id, job_id in targets:
        by_project.setdefault(project_id, []).append(job_id)
    counts = [0, 0]
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    pool = asyncio.Semaphore(concurrency)

    async def work(project_id: str, jobs: Iterator[int]) -> None:
        for job_id in jobs:
            async with pool:
                counts[not await fetch(project_id, job_id)] += 1

    async def project(project_id: str, jobs: list[int], phase: float) -> None:
        due = start + phase
        while due < deadline:
            await asyncio.sleep(max(0.0, due - loop.time()))
            pending = iter(jobs)
            async with asyncio.TaskGroup() as group:
                for _ in range(min(schedule.per_project, len(jobs))):
                    group.create_task(work(project_id, pending))
            due += schedule.interval_s

    async with asyncio.TaskGroup() as group:
        for index, (project_id, jobs) in enumerate(sorted(by_project.items())):
            phase = index * schedule.interval_s / len(by_project)
            group.create_task(project(project_id, jobs, phase))
    return counts[0], counts[1]


def _sdk_show(base_url: str) -> Callable[[str, int], bool]:
    """One ``show_flink_job`` call with a client per thread and project; False on an error."""
    local = threading.local()
    logging.getLogger("HuaweiCloud-SDK").setLevel(logging.WARNING)

    def client_for(project_id: str) -> Any:
        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        from huaweicloudsdkdli.v1 import DliClient

        clients: dict[str, Any] = local.__dict__.setdefault("clients", {})
        if project_id not in clients:
            credentials = BasicCredentials(_SDK_AK, _SDK_SK, project_id)
            builder = DliClient.new_builder().with_credentials(credentials)
            clients[project_id] = builder.with_endpoint(base_url).build()
        return clients[project_id]

    def show(project_id: str, job_id: int) -> bool:
        from huaweicloudsdkcore.exceptions.exceptions import SdkException
        from huaweicloudsdkdli.v1 import ShowFlinkJobRequest

        try:
            client_for(project_id).show_flink_job(ShowFlinkJobRequest(job_id=job_id))
        except SdkException:
            return False
        return True

    return show


def _sdk_runner(base_url: str, targets: list[Target], concurrency: int) -> Runner:
    show = _sdk_show(base_url)

    def worker(mine: list[Target], deadline: float) -> tuple[int, int]:
        counts = [0, 0]
        for project_id, job_id in itertools.cycle(mine):
            if time.monotonic() >= deadline:
                break
            counts[not show(project_id, job_id)] += 1
        return counts[0], counts[1]

    def run(seconds: float) -> tuple[int, int]:
        deadline = time.monotonic() + seconds
        slices = [targets[i::concurrency] or targets for i in range(concurrency)]
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(worker, slices, itertools.repeat(deadline)))
        return sum(r[0] for r in results), sum(r[1] for r in results)

    return run


def _sdk_paced_runner(
    base_url: str, targets: list[Target], concurrency: int, schedule: Schedule
) -> Runner:
    show = _sdk_show(base_url)

    def run(seconds: float) -> tuple[int, int]:
        with ThreadPoolExecutor(concurrency) as threads:

            async def fetch(project_id: str, job_id: int) -> bool:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(threads, show, project_id, job_id)

            return asyncio.run(_on_schedule(targets, concurrency, schedule, seconds, fetch))

    return run
