"""The benchmark's child processes: the simulator, `dli-bridge run` rows, and what they cost.

Each part the benchmark measures runs in a process of its own, so the CPU time
(``/proc/<pid>/stat``) and resident memory (``/proc/<pid>/status`` VmRSS) read for it are its
own and nobody else's. The simulator announces itself with its ``simulator: URL`` line; a
bridge child with its health URL in the ``health and metrics on URL`` log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import BenchError

__all__ = [
    "BridgeChild",
    "BridgeSpec",
    "Sample",
    "bridge_toml",
    "sample",
    "simulator",
]

log = logging.getLogger(__name__)

_TICKS = os.sysconf("SC_CLK_TCK")
_SIM_LINE = re.compile(rb"simulator: (\S+)")
_HEALTH_LINE = re.compile(rb"health and metrics on (http://\S+?)[\"\s]")
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a process: its CPU seconds so far, its resident memory, and when."""

    at: float  # time.monotonic()
    cpu_s: float
    rss_bytes: int


def sample(pid: int) -> Sample:
    """CPU (user + system, this process only) and VmRSS of ``pid``, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name may hold spaces and parentheses: fields start after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return Sample(time.monotonic(), cpu, rss)


async def _read_until(
    proc: asyncio.subprocess.Process,
    pattern: re.Pattern[bytes],
    what: str,
    tail: collections.deque[bytes] | None = None,
) -> str:
    """Read the child's output until ``pattern`` matches; keep draining it into ``tail``."""
    assert proc.stdout is not None
    seen: collections.deque[bytes] = tail if tail is not None else collections.deque(maxlen=200)
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while line := await proc.stdout.readline():
                seen.append(line)
                if match := pattern.search(line):
                    _DRAINS.add(asyncio.get_running_loop().create_task(_drain(proc.stdout, seen)))
                    return match.group(1).decode()
    except TimeoutError:
        pass
    text = b"".join(list(seen)[-20:]).decode(errors="replace")
    raise BenchError(f"{what} did not start (exit {proc.returncode}):\n{text}")


_DRAINS: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader, tail: collections.deque[bytes]) -> None:
    with contextlib.suppress(Exception):
        while line := await stream.readline():
            tail.append(line)
    task = asyncio.current_task()
    if task is not None:
        _DRAINS.discard(task)


async def _stop(proc: asyncio.subprocess.Process, grace_s: float = 15.0) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        log.warning("child %d ignored SIGTERM for %g s: killing it", proc.pid, grace_s)
        proc.kill()
        await proc.wait()


async def _spawn(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # a Ctrl-C of the benchmark reaches children only through us
    )


@contextlib.asynccontextmanager
async def simulator(
    projects: int, jobs_per_project: int, change_rate: float, seed: int = 0
) -> AsyncIterator[tuple[str, int]]:
    """`dli-bridge simulate --port 0` as a child; yields its base URL and pid."""
    argv = [
        sys.executable,
        "-m",
        "bridge",
        "--log-format",
        "plain",
        "simulate",
        "--port",
        "0",
        "--projects",
        str(projects),
        "--jobs-per-project",
        str(jobs_per_project),
        "--change-rate",
        f"{change_rate:g}",
        "--seed",
        str(seed),
    ]
    proc = await _spawn(argv)
    try:
        url = await _read_until(proc, _SIM_LINE, "the simulator")
        yield url, proc.pid
    finally:
        await _stop(proc)


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """One `dli-bridge run` child: what it watches, how it polls, where it writes."""

    name: str  # unique per row: names its topics, transactional prefix and group
    mode: str
    endpoint: str
    bootstrap_servers: str
    projects: Sequence[str]
    interval_s: float
    jitter_s: float
    partitions: int
    max_in_flight: int = 32
    transitional_interval_s: float = 5.0
    reconcile_interval_s: float = 600.0
    project_rate_per_s: float = 1e6  # far above what the simulator needs (see bridge_toml)
    flush_after_s: float | None = None  # None: the bridge's default
    instance_id: str | None = None  # a static group member (kafka.instance_id)

    def topic(self, kind: str) -> str:
        return f"bench.{self.name}.{kind}"


def _toml_value(value: object) -> str:
    return orjson.dumps(value).decode()  # JSON strings, numbers and arrays are TOML too


def _burst(rate_per_s: float) -> int:
    """A project's token-bucket burst: a tenth of a second's calls, unlimited when unpaced."""
    return 10**6 if rate_per_s >= 1e6 else max(1, math.ceil(rate_per_s / 10))


def bridge_toml(spec: BridgeSpec) -> str:
    """The config file of one bridge child (the same key, ``hash_key``, on every instance).

    API limits sit far above anything the simulator needs, so the figures show the bridge's
    cost, not its pacing (the defaults — 5 requests/s a project, 20 a credential — are sized
    for DLI's gateway, not for a benchmark).
    """
    groups: dict[str, dict[str, object]] = {
        "api": {
            "endpoint": spec.endpoint,
            "iam_endpoint": spec.endpoint,
            "region": "sim-1",
            "max_in_flight": spec.max_in_flight,
            "project_rate_per_s": spec.project_rate_per_s,
            "project_burst": _burst(spec.project_rate_per_s),
            "credential_rate_per_s": 1e6,
            "credential_burst": 10**6,
        },
        "auth": {"mode": "none"},
        "projects": {"ids": list(spec.projects)},
        "polling": {
            "mode": spec.mode,
            "interval_s": spec.interval_s,
            "transitional_interval_s": spec.transitional_interval_s,
            "reconcile_interval_s": spec.reconcile_interval_s,
            "jitter_s": spec.jitter_s,
            "drain_s": 5.0,
        }
        | ({} if spec.flush_after_s is None else {"flush_after_s": spec.flush_after_s}),
        "kafka": {
            "bootstrap_servers": spec.bootstrap_servers,
            "transactional_id_prefix": f"bench-{spec.name}",
            "group_id": f"bench-{spec.name}",
            "partitions": spec.partitions,
        }
        | ({} if spec.instance_id is None else {"instance_id": spec.instance_id}),
        # As in production, where the key derives from the DLI credential: every instance
        # fingerprints alike, so a shard handed over is not fetched again job by job.
        "redaction": {"hash_key": f"bench-{spec.name}"},
        "kafka.topics": {kind: spec.topic(kind) for kind in ("events", "state", "dlq")},
        "http": {"bind": "127.0.0.1:0"},
    }
    lines: list[str] = []
    for group, values in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class BridgeChild:
    """A running `dli-bridge run --config FILE` child: its pid, metrics and /proc figures."""

    def __init__(self, spec: BridgeSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.url = ""
        self._session = session
        self._proc: asyncio.subprocess.Process | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="dli-bench-")
        self.output: collections.deque[bytes] = collections.deque(maxlen=400)

    def __repr__(self) -> str:
        return f"<BridgeChild {self.spec.name} pid={self.pid} {self.url or 'not started'}>"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"bridge {self.spec.name} is not running")
        return self._proc.pid

    async def __aenter__(self) -> BridgeChild:
        config = Path(self._dir.name) / "bridge.toml"
        config.write_text(bridge_toml(self.spec))
        argv = [sys.executable, "-m", "bridge", "--log-format", "json", "run"]
        self._proc = await _spawn([*argv, "--config", str(config)])
        try:
            what = f"bridge {self.spec.name}"
            self.url = await _read_until(self._proc, _HEALTH_LINE, what, self.output)
            await self._until_ready()
        except BaseException:
            await _stop(self._proc)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            await _stop(self._proc)
        self._dir.cleanup()

    async def kill(self) -> None:
        """SIGKILL the child and reap it: no drain, no goodbye to the group."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def _until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise BenchError(f"bridge {self.spec.name} exited {self._proc.returncode}")
            async with self._session.get(f"{self.url}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.1)
        raise BenchError(f"bridge {self.spec.name} not ready after {_START_TIMEOUT_S:g} s")

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as ``name{label="v",…}`` → value (labels sorted)."""
        async with self._session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    async def until(self, sample_name: str, at_least: float, timeout_s: float) -> None:
        """Until the /metrics sample ``sample_name`` (as ``metrics()`` names it) reaches
        ``at_least``; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.metrics()).get(sample_name, 0.0) >= at_least:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{self!r}: {sample_name} did not reach {at_least:g} in {timeout_s:g} s")

    def sample(self) -> Sample:
        return sample(self.pid)

    def problems(self, count: int = 5) -> str:
        """The last warning, error or traceback lines the child printed."""
        marks = (b'"level": "warning"', b'"level": "error"', b"Traceback", b'"exception"')
        lines = [line for line in self.output if any(m in line for m in marks)]
        return b"".join(lines[-count:]).decode(errors="replace")[-4000:]
