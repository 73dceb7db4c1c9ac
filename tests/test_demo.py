"""`dli-bridge demo`: what it prints first, how it configures the bridge, and a real run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bridge import demo
from bridge.settings import Settings

WHERE = demo.Where(
    bootstrap_servers="127.0.0.1:40123",
    simulator_url="http://127.0.0.1:40125",
    metrics_url="http://127.0.0.1:40127/metrics",
    topic="dli.jobs.events",
    local_broker=True,
)


def test_banner_says_where_everything_is():
    lines = WHERE.lines(demo.DemoConfig())
    text = "\n".join(lines)
    assert lines[0] == (
        "dli-bridge demo: 3 projects x 12 jobs, ~2 changes/s; bridge polls in list mode every 2s"
    )
    assert "kafka      127.0.0.1:40123  (local broker, stops with the demo)" in text
    assert "http://127.0.0.1:40125/_sim/changes" in text
    assert "metrics    http://127.0.0.1:40127/metrics" in text
    assert "dli-bridge tail --bootstrap-servers 127.0.0.1:40123 --from-beginning" in text


def test_tail_command_names_a_topic_only_when_it_is_not_the_default():
    other = dataclasses.replace(WHERE, topic="my.events")
    assert other.tail_command().endswith("--topic my.events --from-beginning")
    assert "--topic" not in WHERE.tail_command()


def test_tail_command_parses_with_our_cli():
    from bridge.cli import build_parser

    args = build_parser().parse_args(WHERE.tail_command().split()[1:])
    assert (args.command, args.bootstrap_servers, args.from_beginning) == (
        "tail",
        "127.0.0.1:40123",
        True,
    )


def test_settings_point_the_bridge_at_the_simulator_and_the_broker():
    config = demo.DemoConfig(mode="sweep", interval_s=1.5, events_mode="binary")
    settings = demo.demo_settings(
        config,
        bootstrap_servers="127.0.0.1:40123",
        simulator_url="http://127.0.0.1:40125",
        project_ids=["p-1", "p-2"],
    )
    assert isinstance(settings, Settings)
    assert str(settings.api.dli_url) == "http://127.0.0.1:40125"
    assert settings.auth.mode == "none"
    assert settings.projects.ids == ["p-1", "p-2"]
    assert (settings.polling.mode, settings.polling.interval_s) == ("sweep", 1.5)
    assert settings.polling.transitional_interval_s <= 1.5
    assert settings.kafka.bootstrap_servers == "127.0.0.1:40123"
    assert settings.kafka.topics.events == "dli.jobs.events"  # an existing cluster: defaults
    assert settings.events.mode == "binary"
    assert settings.http.bind == "127.0.0.1:0"


def test_settings_ignore_the_callers_bridge_variables(monkeypatch):
    monkeypatch.setenv("BRIDGE_POLLING__MODE", "detail")
    settings = demo.demo_settings(
        demo.DemoConfig(),
        bootstrap_servers="127.0.0.1:1",
        simulator_url="http://127.0.0.1:2",
        project_ids=["p-1"],
    )
    assert settings.polling.mode == "list"


def test_progress_that_only_counts_is_throttled():
    now = [0.0]
    said: list[str] = []
    report = demo.throttled(said.append, 5.0, clock=lambda: now[0])
    for t, line in [
        (0.0, "resolving Kafka 3.9.2 from Maven Central"),
        (0.1, "resolving Kafka 3.9.2: 1 jars downloaded (a.jar)"),
        (1.0, "resolving Kafka 3.9.2: 9 jars downloaded (b.jar)"),
        (5.2, "resolving Kafka 3.9.2: 30 jars downloaded (c.jar)"),
        (5.3, "cached 57 Kafka 3.9.2 jars in /x"),
    ]:
        now[0] = t
        report(line)
    assert said == [
        "resolving Kafka 3.9.2 from Maven Central",
        "resolving Kafka 3.9.2: 30 jars downloaded (c.jar)",
        "cached 57 Kafka 3.9.2 jars in /x",
    ]


# --- a real run: events within seconds, a signal leaves nothing behind ---------------------------


def children() -> dict[int, list[int]]:
    """Every process's children, from /proc (ppid is the field after the parenthesised name)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def broker_of(pid: int) -> tuple[int, Path]:
    """The demo's Kafka JVM and its temp dir (from ``-Dkafka.logs.dir=``)."""
    for child in descendants(pid):
        args = cmdline(child)
        if "kafka.Kafka" in args:
            logs = next(a for a in args if a.startswith("-Dkafka.logs.dir="))
            return child, Path(logs.split("=", 1)[1])
    raise AssertionError(f"no Kafka JVM under pid {pid}")


async def event_lines(stream: asyncio.StreamReader, count: int) -> tuple[list[str], list[str]]:
    before: list[str] = []
    events: list[str] = []
    while len(events) < count:
        line = (await stream.readline()).decode()
        if not line:
            break
        (events if line[:4].isdigit() else before).append(line)
    return before, events


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
async def test_demo_shows_events_and_a_signal_stops_everything(stop):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    argv = ["--projects", "2", "--jobs-per-project", "4", "--change-rate", "2", "--interval", "1"]
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "NO_COLOR": "1"},
    )
    assert proc.stdout is not None
    broker: tuple[int, Path] | None = None
    try:
        async with asyncio.timeout(150):
            before, events = await event_lines(proc.stdout, 8)
        elapsed = time.monotonic() - began
        if len(events) == 8:  # else the demo died: its stderr below says why
            broker = broker_of(proc.pid)
            assert broker[1].is_dir(), "the broker's temp dir is not where its JVM says"
    finally:
        proc.send_signal(stop)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    seen = f"stdout:\n{''.join(before + events)}\nstderr (end):\n{err.decode()[-3000:]}"
    assert proc.returncode == 0, seen
    assert any(line.startswith("  tail       dli-bridge tail --bootstrap") for line in before), seen
    # the first sweep finds every job: discovered events come first
    assert sum("discovered (" in line for line in events) >= 4, seen
    assert elapsed < 120, seen
    assert broker is not None, seen
    jvm, workdir = broker
    assert not alive(jvm), f"the Kafka JVM {jvm} outlived the demo\n{seen}"
    assert not workdir.exists(), f"{workdir} was left behind\n{seen}"
