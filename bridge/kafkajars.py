"""Kafka broker jars, resolved from Maven Central once per version into a local cache."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from bridge.errors import LocalKafkaError
from bridge.settings import CACHE_DIR_ENV, KAFKA_VERSION_ENV

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "LoggingBackend",
    "Progress",
    "absolute",
    "check_version",
    "default_cache_dir",
    "default_kafka_version",
    "ensure_jars",
    "environ_value",
    "find_mvn",
    "find_tool",
    "last_lines",
    "libs_dir",
    "logging_backend",
    "run_command",
]

log = logging.getLogger(__name__)

# The newest Kafka release (Maven Central lists nothing after 4.4.0) on which the whole suite,
# transactions and fencing included, passes with aiokafka 0.14 (v0 transaction requests only).
# CI also runs the integration tests on 3.9.2, the last line that keeps every old protocol.
DEFAULT_KAFKA_VERSION: Final = "4.4.0"

# The local broker runs in KRaft mode; `kafka.tools.StorageTool format` arrived with 3.3.
OLDEST_KAFKA: Final = (3, 3)
MAVEN_TIMEOUT_S: Final = 900.0
# Names read before everything was spelt BRIDGE_*; still honoured, with a warning.
_DEPRECATED_ENV: Final = {
    CACHE_DIR_ENV: "DLI_BRIDGE_CACHE_DIR",
    KAFKA_VERSION_ENV: "DLI_BRIDGE_KAFKA_VERSION",
}
_RESOURCES: Final = resources.files("bridge").joinpath("resources")
_POM: Final = _RESOURCES.joinpath("kafka-pom.xml")
_VERSION_RE: Final = re.compile(r"(\d+)\.(\d+)\.\d+(?:[.-][0-9A-Za-z]+)*")
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*m")  # Maven 3.8 colours even with -B
_TAIL_LINES: Final = 40
_LINE_LIMIT: Final = 1 << 20  # asyncio's 64 KiB default could split a long Maven line
# Batch-mode Maven (-B) without -ntp logs one such line per fetched file.
_DOWNLOADED_RE: Final = re.compile(r"Downloaded from [^:]+: \S*/([^/\s]+\.jar)\b")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoggingBackend:
    """The logging jars (a Maven profile in kafka-pom.xml) and config one Kafka line needs."""

    profile: str
    log4j2_version: str
    config_name: str  # a file in bridge/resources
    # a 3.x property given to 4.x (or the reverse) is silently ignored: the broker logs nothing
    config_property: str

    @property
    def config_text(self) -> str:
        return _RESOURCES.joinpath(self.config_name).read_text()

    def jvm_option(self, config: Path) -> str:
        url = f"file:{config}" if self.profile == "reload4j" else str(config)
        return f"-D{self.config_property}={url}"


def check_version(version: str) -> tuple[int, int]:
    """Return (major, minor) of a Kafka version such as ``3.9.2``; reject anything else."""
    match = _VERSION_RE.fullmatch(version)
    if match is None:
        raise LocalKafkaError(
            f"{version!r} is not a Kafka version: give one like {DEFAULT_KAFKA_VERSION} or 4.1.2"
        )
    line = int(match[1]), int(match[2])
    if line < OLDEST_KAFKA:
        raise LocalKafkaError(
            f"Kafka {version} is not supported: the local broker runs in KRaft mode, whose "
            "storage tool needs Kafka 3.3 or newer; choose 3.3 or newer, e.g. "
            f"{DEFAULT_KAFKA_VERSION} (the default) or 4.1.2"
        )
    return line


def logging_backend(version: str) -> LoggingBackend:
    """Kafka 3.x logs through reload4j, 4.x through log4j2 (2.25 from 4.2 on)."""
    line = check_version(version)
    if line < (4, 0):
        return LoggingBackend("reload4j", "", "log4j.properties", "log4j.configuration")
    log4j2 = "2.24.3" if line < (4, 2) else "2.25.3"
    return LoggingBackend("log4j2", log4j2, "log4j2.properties", "log4j2.configurationFile")


def environ_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``name`` from the environment, else its deprecated ``DLI_BRIDGE_*`` spelling (warned)."""
    env = os.environ if environ is None else environ
    if value := env.get(name):
        return value
    old = _DEPRECATED_ENV.get(name)
    if old is None or not (value := env.get(old)):
        return None
    message = f"{old} is deprecated and will be removed: set {name} instead"
    log.warning("%s", message)
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    return value


def default_cache_dir() -> Path:
    """$BRIDGE_CACHE_DIR, else $XDG_CACHE_HOME/dli-bridge, else ~/.cache/dli-bridge; absolute."""
    if explicit := environ_value(CACHE_DIR_ENV):
        return absolute(Path(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says to ignore a relative value
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "dli-bridge"


def default_kafka_version() -> str:
    """$BRIDGE_KAFKA_VERSION, else the pinned DEFAULT_KAFKA_VERSION."""
    return environ_value(KAFKA_VERSION_ENV) or DEFAULT_KAFKA_VERSION


def absolute(path: Path) -> Path:
    """``~`` expanded and made absolute: Maven and the JVM run in other directories."""
    return path.expanduser().absolute()


def find_tool(name: str, explicit: str | None, *, home_env: str, what: str, install: str) -> str:
    """The path of ``name``: ``explicit``, else ``$<home_env>/bin/<name>``, else the PATH.

    The error names every way to provide it, for a user who has it somewhere else.
    """
    home = os.environ.get(home_env)
    candidate = explicit or (str(Path(home) / "bin" / name) if home else name)
    if found := shutil.which(candidate):
        return found
    origin = "" if explicit or not home else f" from {home_env}={home}"
    raise LocalKafkaError(
        f"{what} ({candidate!r}{origin}) was not found: install {install}, set {home_env} "
        f"to its installation directory, or pass the executable with --{name} PATH"
    )


def find_mvn(mvn: str | None = None) -> str:
    """Maven: ``mvn``, else $MAVEN_HOME/bin/mvn, else mvn on the PATH."""
    return find_tool(
        "mvn",
        mvn,
        home_env="MAVEN_HOME",
        what="Maven",
        install="Maven 3.6+ (`apt-get install maven`)",
    )


def libs_dir(cache_dir: Path, version: str) -> Path:
    """Where one Kafka version's jars live; one version per directory, never mixed."""
    return cache_dir / "kafka" / version / "libs"


async def ensure_jars(
    version: str,
    cache_dir: Path | None = None,
    *,
    mvn: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Return the directory holding Kafka ``version``'s jars, resolving them with Maven once.

    The ``complete`` marker is written only after a successful copy, so a cached version
    never runs Maven again; a file lock keeps concurrent first runs from racing. A failed
    run leaves nothing behind (no lock, no staging directory). ``progress`` receives one
    line per step of a first-time resolution, e.g. "resolving Kafka 3.9.2: 12 jars
    downloaded (kafka-clients-3.9.2.jar)", for a user watching a minutes-long first start.
    """
    check_version(version)
    libs = libs_dir(absolute(cache_dir or default_cache_dir()), version)
    marker = libs.parent / "complete"
    if marker.exists():
        return libs
    try:
        async with _file_lock(libs.parent / "lock"):
            if not marker.exists():
                await _resolve_jars(version, libs, mvn, progress)
                jars = sorted(libs.glob("*.jar"))
                total = sum(j.stat().st_size for j in jars)
                marker.write_text(f"{len(jars)} jars, {total} bytes\n")
                _report(progress, f"cached {len(jars)} Kafka {version} jars in {libs}")
    finally:
        with contextlib.suppress(OSError):  # only when empty: a failure leaves nothing
            libs.parent.rmdir()
    return libs


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on ``path``, removed again on exit.

    Removing a lock file races with a process that opened it just before: after locking,
    check that the path still names the file we hold, and start over when it does not.
    """
    while True:
        handle = _open_lock(path)
        try:
            await _flock(handle, path)
            if _same_file(handle.fileno(), path):
                try:
                    yield
                finally:
                    _unlink(path)
                return
        finally:
            handle.close()


def _open_lock(path: Path) -> Any:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a")
    except OSError as exc:
        raise LocalKafkaError(
            f"the jar cache {path.parent.parent.parent} is not usable ({exc.strerror}): pass "
            f"--cache-dir DIR or set {CACHE_DIR_ENV} to a writable directory"
        ) from None


async def _flock(handle: Any, path: Path) -> None:
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            log.debug("waiting for another process to finish resolving into %s", path.parent)
            await asyncio.sleep(0.5)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


async def _resolve_jars(
    version: str, libs: Path, mvn: str | None, progress: Progress | None
) -> None:
    try:
        mvn_path = find_mvn(mvn)
    except LocalKafkaError as exc:
        raise LocalKafkaError(
            f"{exc} (the Kafka {version} jars are not cached in {libs})"
        ) from None
    staging = _fresh_staging(libs)
    try:
        await _run_maven(mvn_path, version, staging, progress)
        (staging / "libs").rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def _run_maven(mvn: str, version: str, staging: Path, progress: Progress | None) -> None:
    argv = _maven_argv(mvn, version, staging, quiet=progress is None)
    _report(progress, f"resolving Kafka {version} from Maven Central (first use of this version)")
    on_line = _download_counter(version, progress) if progress is not None else None
    code, output = await run_command(
        argv, MAVEN_TIMEOUT_S, what="Maven", cwd=staging, on_line=on_line
    )
    if code != 0 or not (staging / "libs" / f"kafka_2.13-{version}.jar").is_file():
        raise LocalKafkaError(
            f"Maven could not resolve Kafka {version} (exit status {code}): check that the version "
            f"exists on Maven Central (e.g. {DEFAULT_KAFKA_VERSION}, 4.1.2) and that Central, or "
            "the mirror in ~/.m2/settings.xml, is reachable; then retry",
            log_tail=last_lines(output),
        )


def _fresh_staging(libs: Path) -> Path:
    staging = libs.parent / "staging"
    for stale in (staging, libs):  # left by an interrupted earlier run
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    # Maven gets its own copy: the installed package may be read-only
    (staging / "pom.xml").write_bytes(_POM.read_bytes())
    return staging


def _report(progress: Progress | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)


def _download_counter(version: str, progress: Progress) -> Callable[[str], None]:
    """An ``on_line`` for Maven's output that reports each jar it downloads, counted."""
    count = 0

    def on_line(line: str) -> None:
        nonlocal count
        if match := _DOWNLOADED_RE.search(line):
            count += 1
            progress(f"resolving Kafka {version}: {count} jars downloaded ({match[1]})")

    return on_line


def _maven_argv(mvn: str, version: str, staging: Path, *, quiet: bool = True) -> list[str]:
    backend = logging_backend(version)
    # -q -ntp: silent; without them batch-mode Maven names every file it downloads
    verbosity = ["-q", "-ntp"] if quiet else []
    argv = [mvn, "-B", *verbosity, "-f", str(staging / "pom.xml"), f"-P{backend.profile}"]
    argv.append(f"-Dkafka.version={version}")
    if backend.log4j2_version:
        argv.append(f"-Dlog4j2.version={backend.log4j2_version}")
    argv += ["dependency:copy-dependencies", "-DincludeScope=runtime"]
    return [*argv, f"-DoutputDirectory={staging / 'libs'}"]


async def run_command(
    argv: list[str],
    timeout_s: float,
    *,
    what: str,
    cwd: Path,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run a short-lived command to completion; return its exit status and merged output.

    ``on_line`` sees each output line as it arrives (colour codes removed).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            limit=_LINE_LIMIT,
        )
    except OSError as exc:
        raise LocalKafkaError(f"could not run {what} ({argv[0]}): {exc}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            output = await _read_lines(proc, on_line)
            await proc.wait()
    except TimeoutError as exc:
        raise LocalKafkaError(f"{what} did not finish within {timeout_s:g}s") from exc
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave it running
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, output


async def _read_lines(
    proc: asyncio.subprocess.Process, on_line: Callable[[str], None] | None
) -> str:
    assert proc.stdout is not None  # stdout=PIPE
    lines = []
    async for raw in proc.stdout:
        line = _ANSI_RE.sub("", raw.decode(errors="replace"))
        lines.append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    return "".join(lines)


def last_lines(text: str, count: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-count:])
