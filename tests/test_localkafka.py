"""The local Kafka launcher: config, errors that name the fix, process hygiene, the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bridge.errors import LocalKafkaError
from bridge.kafkajars import ensure_jars
from bridge.localkafka import LocalKafka, broker_config, new_cluster_id
from tests.kafka_fixtures import create_topic, eventually, kafka_version

# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("offsets.topic.replication.factor", "1"),
        ("offsets.topic.num.partitions", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        ("transaction.state.log.num.partitions", "1"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("group.min.session.timeout.ms", "500"),
        ("log.cleaner.backoff.ms", "200"),
        ("controller.quorum.voters", "1@127.0.0.1:9093"),
        ("advertised.listeners", "PLAINTEXT://127.0.0.1:9092"),
        ("log.dirs", "/w/data"),
    ],
)
def test_broker_config_is_tuned_for_one_loopback_node(key, value):
    assert broker_config(9092, 9093, Path("/w/data"), "3.9.2")[key] == value


@pytest.mark.parametrize(("version", "has_share"), [("3.9.2", False), ("4.1.2", True)])
def test_broker_config_adds_share_coordinator_settings_on_kafka_4(version, has_share):
    config = broker_config(9092, 9093, Path("/w"), version)
    assert ("share.coordinator.state.topic.replication.factor" in config) is has_share


def test_new_cluster_id_is_22_url_safe_characters_not_starting_with_dash():
    ids = {new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid) for cid in ids)


# --- errors before any JVM runs ---------------------------------------------------------------


async def test_start_fails_when_java_is_missing(tmp_path):
    kafka = LocalKafka(java="/nonexistent/java", cache_dir=tmp_path)
    with pytest.raises(
        LocalKafkaError, match=r"Java \('/nonexistent/java'\) was not found: install .* --java PATH"
    ):
        await kafka.start()
    assert "stopped" in repr(kafka)


async def test_java_home_is_honoured_and_named_when_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    kafka = LocalKafka(cache_dir=tmp_path)
    with pytest.raises(LocalKafkaError) as caught:
        await kafka.start()
    message = str(caught.value)
    assert message.startswith(f"Java ('{tmp_path}/jdk/bin/java' from JAVA_HOME={tmp_path}/jdk)")
    assert "set JAVA_HOME to its installation directory" in message


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_port_out_of_range_is_refused_at_construction(port):
    with pytest.raises(LocalKafkaError, match=f"port {port} is not a TCP port: give 1-65535"):
        LocalKafka(port=port)


def test_relative_cache_and_data_dirs_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kafka = LocalKafka(cache_dir=Path("cache"), data_dir=Path("data"))
    assert (kafka.cache_dir, kafka.data_dir) == (tmp_path / "cache", tmp_path / "data")


def test_unsupported_version_is_refused_at_construction():
    with pytest.raises(LocalKafkaError, match=r"Kafka 2\.7\.2 is not supported: .* 3\.3 or newer"):
        LocalKafka("2.7.2")


async def test_start_fails_when_mvn_is_missing_and_cache_is_empty(tmp_path):
    kafka = LocalKafka(mvn="/nonexistent/mvn", cache_dir=tmp_path)
    with pytest.raises(
        LocalKafkaError, match=r"Maven \('/nonexistent/mvn'\) was not found: install .* --mvn PATH"
    ):
        await kafka.start()


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_start_fails_before_spawning_when_port_is_taken(tmp_path, taken_port):
    # an empty cache and no mvn: reaching jar resolution would raise a different error
    kafka = LocalKafka(port=taken_port, cache_dir=tmp_path, mvn="/nonexistent/mvn")
    with pytest.raises(LocalKafkaError, match=f"port {taken_port} on 127.0.0.1 is already in use"):
        await kafka.start()
    assert kafka.pid is None


async def test_start_is_single_use(tmp_path):
    kafka = LocalKafka(java="/nonexistent/java", cache_dir=tmp_path)
    with pytest.raises(LocalKafkaError):
        await kafka.start()
    with pytest.raises(LocalKafkaError, match="already started; create a new LocalKafka"):
        await kafka.start()


def test_bootstrap_servers_before_start_raises():
    with pytest.raises(LocalKafkaError, match="is not running: start"):
        _ = LocalKafka().bootstrap_servers


# --- real brokers -----------------------------------------------------------------------------


def jvm_processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and not is_gone(int(proc.name)):
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def is_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs; a zombie waiting for its reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.fixture
async def jars() -> Path:
    """The cached jars of the tested version (Maven runs only if this machine has none yet)."""
    return await ensure_jars(kafka_version())


@pytest.mark.integration
async def test_second_start_runs_from_cache_without_maven(jars):
    async with LocalKafka(kafka_version(), mvn="/nonexistent/mvn") as kafka:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        port = int(kafka.bootstrap_servers.rpartition(":")[2])
        pid, workdir = kafka.pid, kafka.log_path.parent
        assert "Kafka Server started" in kafka.log_path.read_text()

    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", port)]
    assert pid is not None
    assert is_gone(pid)
    assert not workdir.exists()


@pytest.mark.integration
async def test_start_fails_fast_with_jvm_output_when_broker_exits(jars):
    kafka = LocalKafka(kafka_version(), heap_mb=1)  # the JVM refuses a 1 MiB heap
    with pytest.raises(LocalKafkaError, match="JVM exited with status 1 while starting") as caught:
        await kafka.start()
    assert "Too small maximum heap" in caught.value.log_tail
    assert "[kafka.out]" in caught.value.log_tail


@pytest.mark.integration
async def test_start_times_out_and_leaves_no_jvm_behind(jars):
    kafka = LocalKafka(kafka_version(), startup_timeout_s=0.5)
    with pytest.raises(LocalKafkaError, match=r"not ready on 127\.0\.0\.1:\d+ within 0\.5s: allow"):
        await kafka.start()
    # the temp dir name is unique and on the JVM's command line (-Dkafka.logs.dir)
    workdir = kafka.log_path.parent
    assert not workdir.exists()
    assert jvm_processes_mentioning(str(workdir)) == []


ORPHAN_SCRIPT = """\
import asyncio
from bridge.localkafka import LocalKafka

async def main():
    kafka = LocalKafka({version!r})
    await kafka.start()
    print(kafka.pid, kafka.log_path.parent, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
async def orphaned_child(jars) -> AsyncIterator[asyncio.subprocess.Process]:
    script = ORPHAN_SCRIPT.format(version=kafka_version())
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    yield child
    if child.returncode is None:
        child.kill()
    await child.wait()


@pytest.mark.integration
async def test_jvm_dies_when_its_parent_is_killed(orphaned_child):
    assert orphaned_child.stdout is not None
    async with asyncio.timeout(120.0):
        pid_text, workdir = (await orphaned_child.stdout.readline()).decode().split()
    pid = int(pid_text)
    try:
        orphaned_child.kill()  # SIGKILL: no Python cleanup runs, only the kernel's PDEATHSIG
        await orphaned_child.wait()

        await eventually(lambda: _gone(pid), timeout_s=10.0, what=f"JVM {pid} exiting")
    finally:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


async def _gone(pid: int) -> bool:
    return is_gone(pid)


@pytest.fixture
async def cli_broker(jars) -> AsyncIterator[asyncio.subprocess.Process]:
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "local-kafka",
        "--kafka-version",
        kafka_version(),
        "--heap-mb",
        "256",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    yield cli
    if cli.returncode is None:
        cli.kill()
        await cli.wait()


@pytest.mark.integration
async def test_cli_prints_bootstrap_serves_and_exits_zero_on_sigterm(cli_broker, topic_name):
    assert cli_broker.stdout is not None
    async with asyncio.timeout(120.0):
        line = (await cli_broker.stdout.readline()).decode()
    match = re.fullmatch(r"bootstrap: (127\.0\.0\.1:\d+)\n", line)
    assert match, line
    bootstrap = match[1]

    await create_topic(bootstrap, topic_name)
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        sent = await producer.send_and_wait(topic_name, b"hello", key=b"k")
    assert sent.offset == 0

    cli_broker.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60.0):
        assert await cli_broker.wait() == 0


async def test_cli_rejects_a_bad_version_with_exit_status_2():
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "local-kafka",
        "--kafka-version",
        "latest",
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60.0):
        _, err = await cli.communicate()
    assert cli.returncode == 2
    assert b"'latest' is not a Kafka version" in err


# --- restart on the same port and data (the engine's broker-outage test needs it) -------------


async def read_all(bootstrap: str, topic: str, count: int) -> list[bytes | None]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    values: list[bytes | None] = []
    await consumer.start()
    try:
        async with asyncio.timeout(60.0):
            while len(values) < count:
                batches = await consumer.getmany(timeout_ms=1000)
                values += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return values


@pytest.mark.integration
async def test_broker_restarts_on_the_same_port_with_its_topics_and_records(
    jars, tmp_path, topic_name, caplog
):
    caplog.set_level(logging.INFO, logger="bridge.localkafka")
    data_dir = tmp_path / "broker"
    kafka = LocalKafka(kafka_version(), data_dir=data_dir)
    again: LocalKafka | None = None
    try:
        bootstrap = await kafka.start()
        await create_topic(bootstrap, topic_name)
        async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
            await producer.send_and_wait(topic_name, b"before-1")
            await producer.send_and_wait(topic_name, b"before-2")

        await kafka.stop()
        assert "stopped" in caplog.text
        assert "143" not in caplog.text
        assert all(r.levelno == logging.INFO for r in caplog.records if "pid" in r.getMessage())
        assert (data_dir / "data" / "meta.properties").is_file()

        # the same object starts again ...
        assert await kafka.start() == bootstrap
        async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
            await producer.send_and_wait(topic_name, b"after-1")
        await kafka.stop()

        # ... and so does a new one given the same port and data dir
        port = int(bootstrap.rpartition(":")[2])
        again = LocalKafka(kafka_version(), port=port, data_dir=data_dir)
        assert await again.start() == bootstrap
        assert await read_all(bootstrap, topic_name, 3) == [b"before-1", b"before-2", b"after-1"]
    finally:
        await kafka.stop()
        if again is not None:
            await again.stop()
    assert data_dir.is_dir()  # a given data dir is the caller's: never deleted


async def test_without_data_dir_a_stopped_broker_cannot_start_again(tmp_path):
    kafka = LocalKafka(java="/nonexistent/java", cache_dir=tmp_path)
    with pytest.raises(LocalKafkaError):
        await kafka.start()
    with pytest.raises(LocalKafkaError, match="give it a data_dir to stop and start it again"):
        await kafka.start()
