"""`dli-bridge run` as a real child process: SIGKILL and restart lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.bridge_config import write_config
from tests.kafka_fixtures import eventually, unique_name
from tests.test_app import compare, drive, read_topic

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5
PARTITIONS = 3


@asynccontextmanager
async def bridge_process(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m bridge run --config FILE`, killed on exit if still running."""
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "--log-format",
            "plain",
            "run",
            "--config",
            str(config),
            stdout=sink,
            stderr=sink,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_ready(port: int, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            assert process.returncode is None, "the bridge exited"
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(ready, timeout_s=30, what="/readyz 200")


# "long cycles": detail mode paced at 20 calls a second, one at a time (a cycle of 5 jobs
# takes about 0.3 s) and flush_after_s 0: every change found before a cycle's last call is
# written mid-cycle, in a transaction of its own, so the SIGKILL lands among such writes.
LONG_CYCLES: dict[str, dict[str, Any]] = {
    "polling": {"mode": "detail", "flush_after_s": 0.0},
    "api": {"project_rate_per_s": 20.0, "project_burst": 1},
}


@pytest.mark.parametrize("variant", ["list", "long cycles"])
async def test_sigkill_then_restart_neither_loses_nor_duplicates(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port, variant
):
    extra: dict[str, dict[str, Any]] = LONG_CYCLES if variant == "long cycles" else {}
    polling = {"interval_s": INTERVAL_S, **extra.get("polling", {})}
    name = unique_name(request, "proc")
    port = unused_tcp_port
    log = tmp_path / "bridge.log"
    async with make_simulator(projects=3, jobs_per_project=5, seed=11) as (sim, url):
        config = write_config(
            tmp_path / "bridge.toml",
            bootstrap=kafka_bootstrap,
            base_url=url,
            projects=sim.project_ids,
            name=name,
            port=port,
            **(extra | {"polling": polling}),
            kafka={"partitions": PARTITIONS},
        )
        initial = len(sim.fleet)
        async with bridge_process(config, log) as first:
            await wait_ready(port, first)
            started_ms = int(time.time() * 1000)
            await drive(sim, seconds=3.0, per_s=4.0)
            first.send_signal(signal.SIGKILL)  # mid-run: cycles and transactions in flight
            assert await first.wait() == -signal.SIGKILL
        async with bridge_process(config, log) as second:
            await wait_ready(port, second)
            await drive(sim, seconds=3.0, per_s=4.0)
            await asyncio.sleep(INTERVAL_S * 5 + 1.0)
            second.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                code = await second.wait()
        events = await read_topic(kafka_bootstrap, f"{name}.events", PARTITIONS)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert sum(e["data"]["kind"] == "discovered" for e in events) == initial
    slack_ms = 2 * INTERVAL_S * 1000 + 300
    window = {
        "created": slack_ms,
        "status_changed": slack_ms,
        "updated": slack_ms + 1000,  # list mode: config edits wait for the reconcile fetch
        "deleted": slack_ms,
    }
    verdict = compare(events, sim.changes(), started_ms=started_ms, window_ms=window)
    assert not verdict.problems, "\n".join(verdict.problems)
    assert verdict.checked >= 10
    assert max(e["data"]["sequence"] for e in events) >= 2  # sequences went on after restart


async def test_sigterm_exits_zero_after_draining(
    make_simulator, kafka_bootstrap, request, tmp_path, unused_tcp_port
):
    name = unique_name(request, "proc")
    log = tmp_path / "bridge.log"
    async with make_simulator(projects=1, jobs_per_project=3) as (sim, url):
        config = write_config(
            tmp_path / "bridge.toml",
            bootstrap=kafka_bootstrap,
            base_url=url,
            projects=sim.project_ids,
            name=name,
            port=unused_tcp_port,
        )
        async with bridge_process(config, log) as process:
            await wait_ready(unused_tcp_port, process)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                code = await process.wait()
    output = log.read_text()
    assert code == 0, output
    assert "SIGTERM received" in output
    assert "draining" in output
