"""A real single-node Apache Kafka broker (KRaft) on loopback, run from the cached jars."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import enum
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bridge.errors import LocalKafkaError
from bridge.kafkajars import (
    DEFAULT_KAFKA_VERSION,
    Progress,
    absolute,
    check_version,
    default_cache_dir,
    default_kafka_version,
    ensure_jars,
    find_tool,
    last_lines,
    logging_backend,
    run_command,
)

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "LocalKafka",
    "broker_config",
    "default_kafka_version",
    "new_cluster_id",
]

log = logging.getLogger(__name__)


FORMAT_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 30.0
HOST: Final = "127.0.0.1"  # never "localhost": ::1 versus 127.0.0.1 mismatches

_PR_SET_PDEATHSIG: Final = 1

# Tuned for one node on a small machine. Internal topics with RF > 1 would leave groups and
# transactions on COORDINATOR_NOT_AVAILABLE forever; their default 50 partitions make the
# first group/transaction call slow.
_SINGLE_NODE: Final = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "500",
    # the cleaner sleeps this long when nothing is dirty; the default 15 s hides compaction
    "log.cleaner.backoff.ms": "200",
    "log.cleaner.threads": "1",
    # the dedupe map is a plain heap buffer; the 128 MiB default would crowd a small heap
    "log.cleaner.dedupe.buffer.size": "16777216",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "auto.leader.rebalance.enable": "false",
}
# Kafka 4.x only: share groups' internal topic; unknown (and only warned about) on 3.x.
_SHARE_COORDINATOR: Final = {
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}


def broker_config(port: int, controller_port: int, data_dir: Path, version: str) -> dict[str, str]:
    """server.properties for a combined broker+controller with a static one-voter quorum."""
    config = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        **_SINGLE_NODE,
    }
    if check_version(version) >= (4, 0):
        config.update(_SHARE_COORDINATOR)
    return config


def new_cluster_id() -> str:
    """A random cluster id as Kafka's ``StorageTool random-uuid`` makes it, without a JVM."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka's generator rejects ids that look like a CLI flag and its two reserved ids
        if not cid.startswith("-") and cid not in (
            "AAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAQ",
        ):
            return cid


# --- processes and ports ---------------------------------------------------------------------


def _file_tail(path: Path) -> str:
    try:
        return last_lines(path.read_text(errors="replace"))
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # as the JVM does, so a port left in TIME_WAIT by an earlier broker still counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _find_java(java: str | None) -> str:
    return find_tool(
        "java",
        java,
        home_env="JAVA_HOME",
        what="Java",
        install="a JDK or JRE 17+ (`apt-get install openjdk-17-jre-headless`)",
    )


def _check_port(port: int | None) -> int | None:
    """None and 0 both mean "a free port"; anything else must be a TCP port."""
    if port is not None and not 0 <= port <= 65535:
        raise LocalKafkaError(f"port {port} is not a TCP port: give 1-65535, or 0 for a free one")
    return port or None


def _read_port(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return None


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux SIGKILL the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    # looked up before fork: the child between fork and exec must not import or allocate
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        # PDEATHSIG fires when the *thread* that forked us exits, hence spawning from the
        # event-loop thread rather than an executor thread
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    # plain Popen, not asyncio: closing an event loop kills the subprocesses it started
    with output.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach the JVM directly
            preexec_fn=_parent_death_hook(),
        )


async def _exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            # Popen has no awaitable exit, and asyncio's child watcher must not own the JVM
            while proc.poll() is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    return proc.poll() is not None


async def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM (Kafka's shutdown hook does a controlled shutdown), then SIGKILL."""
    try:
        if grace_s > 0 and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await _exited(proc, grace_s):
                log.warning("Kafka pid %d ignored SIGTERM for %gs; killing it", proc.pid, grace_s)
    finally:  # also when cancelled mid-wait: the JVM must not outlive us
        if proc.poll() is None:
            proc.kill()
    await _exited(proc, 10.0)


async def _accepts(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(HOST, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _has_broker(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        async with asyncio.timeout(10.0):
            await admin.start()
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return bool(cluster.get("brokers"))


# --- the broker ------------------------------------------------------------------------------


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class LocalKafka:
    """One single-node KRaft broker process on loopback.

    ``start()`` (or ``async with``) resolves the jars (cached per version), formats the
    storage, spawns the JVM and waits until a metadata request succeeds; ``stop()`` shuts
    it down. The JVM dies with this process.

    Without ``data_dir`` the broker lives in a private temp dir that ``stop()`` deletes,
    and the object is single use. With ``data_dir`` its files live there and survive
    ``stop()``: ``start()`` may then be called again (or a new LocalKafka given the same
    ``data_dir`` and ``port``) and the broker comes back on the same port with its topics
    and records, as a restarted production broker would. ``progress`` receives one line per
    step of a first-time jar resolution (see ``kafkajars.ensure_jars``).
    """

    def __init__(
        self,
        version: str = DEFAULT_KAFKA_VERSION,
        *,
        cache_dir: Path | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        heap_mb: int = 512,
        startup_timeout_s: float = 120.0,
        java: str | None = None,
        mvn: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        check_version(version)
        self.version = version
        self.cache_dir = absolute(cache_dir or default_cache_dir())
        self.data_dir = absolute(data_dir) if data_dir is not None else None
        self._port = _check_port(port)
        self._heap_mb = heap_mb
        self._startup_timeout_s = startup_timeout_s
        self._java = java
        self._mvn = mvn
        self._progress = progress
        self._state = _State.NEW
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._bootstrap: str | None = None

    def __repr__(self) -> str:
        where = f" {self._bootstrap}" if self._bootstrap else ""
        return f"<LocalKafka {self.version} {self._state.value}{where}>"

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``; valid once ``start()`` has returned."""
        if self._bootstrap is None or self._state is not _State.RUNNING:
            raise LocalKafkaError(f"{self!r} is not running: start() it first")
        return self._bootstrap

    @property
    def log_path(self) -> Path:
        """The broker's log file (server.log in its temp dir, deleted by ``stop()``)."""
        return self._dir() / "server.log"

    @property
    def output_path(self) -> Path:
        """The JVM's stdout and stderr: failures before logging is set up land here."""
        return self._dir() / "kafka.out"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> str:
        """Resolve, format (first time only), spawn and wait until ready; return the bootstrap.

        Again after ``stop()`` only with a ``data_dir``: same port, same data.
        """
        restartable = self._state is _State.STOPPED and self.data_dir is not None
        if self._state is not _State.NEW and not restartable:
            raise LocalKafkaError(
                f"{self!r} was already started; create a new LocalKafka "
                "(or give it a data_dir to stop and start it again)"
            )
        self._state = _State.RUNNING
        try:
            return await self._start()
        except BaseException:
            await self._teardown(grace_s=0)
            raise

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT_S, remove the temp dir. Safe to call twice."""
        if self._state is _State.RUNNING:
            await self._teardown(grace_s=STOP_TIMEOUT_S)
        self._state = _State.STOPPED

    async def _start(self) -> str:
        java = _find_java(self._java)
        port = self._client_port()
        libs = await ensure_jars(
            self.version, self.cache_dir, mvn=self._mvn, progress=self._progress
        )
        self._workdir = self._make_workdir()
        config = self._write_config(port, self._controller_port())
        if not (self._workdir / "data" / "meta.properties").exists():
            await self._format(java, libs, config)
        if self.data_dir is not None:  # a restart comes back where clients expect it
            self._port = port
        began = time.monotonic()
        self._proc = _spawn(
            [java, *self._jvm_args(libs, self._heap_mb), "kafka.Kafka", str(config)],
            self.output_path,
        )
        await self._wait_ready(self._proc, port)
        log.info(
            "Kafka %s ready on %s:%d after %.1fs (pid %d, log %s)",
            self.version,
            HOST,
            port,
            time.monotonic() - began,
            self._proc.pid,
            self.log_path,
        )
        self._bootstrap = f"{HOST}:{port}"
        return self._bootstrap

    def _dir(self) -> Path:
        if self._workdir is None:
            raise LocalKafkaError(f"{self!r} has no files: start() it first")
        return self._workdir

    def _make_workdir(self) -> Path:
        if self.data_dir is None:
            return Path(tempfile.mkdtemp(prefix=f"dli-bridge-kafka-{self.version}-"))
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalKafkaError(
                f"the Kafka data dir {self.data_dir} is not usable ({exc.strerror}): "
                "give a writable directory"
            ) from None
        return self.data_dir

    def _controller_port(self) -> int:
        """A free port; with a data_dir the one used before, when it is still free."""
        saved = self._dir() / "controller.port"
        previous = _read_port(saved) if self.data_dir is not None else None
        port = previous if previous and _port_is_free(previous) else _free_port()
        saved.write_text(f"{port}\n")
        return port

    def _client_port(self) -> int:
        if self._port is None:
            return _free_port()
        if not _port_is_free(self._port):
            raise LocalKafkaError(
                f"port {self._port} on {HOST} is already in use: stop what listens there "
                f"(`ss -ltnp 'sport = :{self._port}'`) or choose another port "
                "(omit it to get a free one)"
            )
        return self._port

    def _write_config(self, port: int, controller_port: int) -> Path:
        workdir = self._dir()
        backend = logging_backend(self.version)
        (workdir / backend.config_name).write_text(backend.config_text)
        config = broker_config(port, controller_port, workdir / "data", self.version)
        path = workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        return path

    def _jvm_args(self, libs: Path, heap_mb: int) -> list[str]:
        workdir = self._dir()
        backend = logging_backend(self.version)
        return [
            f"-Xms{min(heap_mb, 128)}m",
            f"-Xmx{heap_mb}m",
            # a small heap and C1-only JIT start faster and use less CPU than upstream's G1
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            backend.jvm_option(workdir / backend.config_name),
            f"-Dkafka.logs.dir={workdir}",
            "-cp",
            f"{libs}/*",  # expanded by java itself, not by a shell
        ]

    async def _format(self, java: str, libs: Path, config: Path) -> None:
        argv = [java, *self._jvm_args(libs, 256), "kafka.tools.StorageTool", "format"]
        argv += ["-t", new_cluster_id(), "-c", str(config)]
        code, output = await run_command(
            argv, FORMAT_TIMEOUT_S, what="Kafka's storage format", cwd=self._dir()
        )
        if code != 0:
            raise LocalKafkaError(
                f"formatting the Kafka {self.version} storage failed (exit status {code}): the "
                f"jar cache {libs} may be damaged; delete {libs.parent} and retry",
                log_tail=last_lines(output),
            )
        log.debug("formatted: %s", output.strip())

    async def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        # With a fixed port the broker opens its client listener only once it is unfenced,
        # so an accepted connection already means "serving"; the metadata call confirms it.
        try:
            async with asyncio.timeout(self._startup_timeout_s):
                while True:
                    self._check_alive(proc)
                    if await _accepts(port) and await _has_broker(f"{HOST}:{port}"):
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError as exc:
            raise LocalKafkaError(
                f"Kafka {self.version} was not ready on {HOST}:{port} within "
                f"{self._startup_timeout_s:g}s: allow more time (startup_timeout_s) on a slow "
                "or busy machine, or look for the cause in the broker log below",
                log_tail=self._log_tail(),
            ) from exc

    def _check_alive(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.poll()
        if code is not None:
            raise LocalKafkaError(
                f"the Kafka {self.version} JVM exited with status {code} while starting: see its "
                "output below (a bad JVM setting such as the heap size, or Java older than 17?)",
                log_tail=self._log_tail(),
            )

    def _log_tail(self) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            if text := _file_tail(path):
                parts.append(f"[{path.name}]\n{text}")
        return "\n".join(parts)

    async def _teardown(self, grace_s: float) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                await _terminate(proc, grace_s)
                self._log_exit(proc.pid, proc.returncode, asked=grace_s > 0)
        finally:
            if self._workdir is not None and self.data_dir is None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._state = _State.STOPPED

    def _log_exit(self, pid: int, code: int | None, *, asked: bool) -> None:
        # the JVM answers SIGTERM with its shutdown hooks and then exits 143 (128 + 15)
        if not asked:
            log.info("Kafka %s (pid %d) killed", self.version, pid)
        elif code in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
            log.info("Kafka %s (pid %d) stopped", self.version, pid)
        else:
            log.warning("Kafka %s (pid %d) ended with exit status %s", self.version, pid, code)
