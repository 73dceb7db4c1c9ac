"""Kafka jars from Maven Central: versions, logging backends, the per-version cache."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bridge import kafkajars
from bridge.errors import LocalKafkaError
from bridge.kafkajars import (
    check_version,
    default_cache_dir,
    ensure_jars,
    libs_dir,
    logging_backend,
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DLI_BRIDGE_CACHE_DIR": "/c/mine", "XDG_CACHE_HOME": "/x"}, "/c/mine"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/dli-bridge"),
        ({"XDG_CACHE_HOME": "relative/ignored"}, "/home/u/.cache/dli-bridge"),
        ({"DLI_BRIDGE_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, "/home/u/.cache/dli-bridge"),
        ({}, "/home/u/.cache/dli-bridge"),
    ],
)
def test_default_cache_dir_follows_environment(monkeypatch, env, expected):
    monkeypatch.setenv("HOME", "/home/u")
    for name in ("DLI_BRIDGE_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cache_dir() == Path(expected)


def test_libs_dir_is_per_version():
    assert libs_dir(Path("/c"), "3.9.2") == Path("/c/kafka/3.9.2/libs")
    assert libs_dir(Path("/c"), "3.9.2") != libs_dir(Path("/c"), "4.1.2")


@pytest.mark.parametrize(
    ("version", "line"),
    [("3.9.2", (3, 9)), ("4.1.2", (4, 1)), ("10.0.0", (10, 0)), ("4.2.0-rc1", (4, 2))],
)
def test_check_version_returns_major_minor(version, line):
    assert check_version(version) == line


@pytest.mark.parametrize("version", ["", "3.9", "latest", "3.9.2 ", "../3.9.2", "3.9.2;rm"])
def test_check_version_rejects_non_versions(version):
    with pytest.raises(LocalKafkaError, match="is not a Kafka version: give one like"):
        check_version(version)


@pytest.mark.parametrize(
    ("version", "profile", "log4j2", "option"),
    [
        ("3.9.2", "reload4j", "", "-Dlog4j.configuration=file:/w/log4j.properties"),
        ("4.0.1", "log4j2", "2.24.3", "-Dlog4j2.configurationFile=/w/log4j2.properties"),
        ("4.1.2", "log4j2", "2.24.3", "-Dlog4j2.configurationFile=/w/log4j2.properties"),
        ("4.2.0", "log4j2", "2.25.3", "-Dlog4j2.configurationFile=/w/log4j2.properties"),
    ],
)
def test_logging_backend_matches_kafka_line(version, profile, log4j2, option):
    backend = logging_backend(version)
    assert (backend.profile, backend.log4j2_version) == (profile, log4j2)
    assert backend.jvm_option(Path("/w") / backend.config_name) == option
    assert "kafka.logs.dir}/server.log" in backend.config_text


def test_pom_ships_both_logging_profiles():
    pom = kafkajars._POM.read_text()
    for needle in ("<id>reload4j</id>", "<id>log4j2</id>", "${kafka.version}", "kafka_2.13"):
        assert needle in pom


# --- jar cache with a stand-in for Maven ------------------------------------------------------

FAKE_MVN = """\
#!/bin/sh
echo "$@" >> "{calls}"
for arg in "$@"; do
  case "$arg" in
    -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}" ;;
    -Dkafka.version=*) version="${{arg#-Dkafka.version=}}" ;;
  esac
done
sleep 0.3
if [ "{fail}" = yes ]; then echo "[ERROR] Could not find artifact kafka_2.13:$version"; exit 1; fi
mkdir -p "$out" && echo jar > "$out/kafka_2.13-$version.jar"
"""


def fake_mvn(tmp_path: Path, *, fail: bool = False) -> tuple[str, Path]:
    """A shell script standing in for mvn; returns its path and the file logging its calls."""
    calls = tmp_path / "mvn-calls"
    script = tmp_path / "fake-mvn"
    script.write_text(FAKE_MVN.format(calls=calls, fail="yes" if fail else "no"))
    script.chmod(0o755)
    return str(script), calls


async def test_ensure_jars_runs_maven_once_even_when_called_concurrently(tmp_path):
    mvn, calls = fake_mvn(tmp_path)
    cache = tmp_path / "cache"

    first, second = await asyncio.gather(
        ensure_jars("3.9.2", cache, mvn=mvn), ensure_jars("3.9.2", cache, mvn=mvn)
    )
    again = await ensure_jars("3.9.2", cache, mvn="/nonexistent/mvn")

    assert first == second == again == libs_dir(cache, "3.9.2")
    assert (again / "kafka_2.13-3.9.2.jar").is_file()
    assert len(calls.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.9.2", ["-B", "-q", "-Preload4j", "-Dkafka.version=3.9.2", "-DincludeScope=runtime"]),
        ("4.1.2", ["-B", "-Plog4j2", "-Dkafka.version=4.1.2", "-Dlog4j2.version=2.24.3"]),
    ],
)
async def test_ensure_jars_runs_maven_in_batch_mode_with_the_version_profile(
    tmp_path, version, expected
):
    mvn, calls = fake_mvn(tmp_path)
    await ensure_jars(version, tmp_path / "cache", mvn=mvn)
    args = calls.read_text().split()
    assert all(arg in args for arg in expected)
    assert "dependency:copy-dependencies" in args


async def test_failed_resolution_writes_no_marker_and_retries_next_time(tmp_path):
    failing, calls = fake_mvn(tmp_path, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(LocalKafkaError, match=r"Maven could not resolve Kafka 3\.9\.2") as caught:
        await ensure_jars("3.9.2", cache, mvn=failing)
    assert "Could not find artifact kafka_2.13:3.9.2" in caught.value.log_tail
    assert not (libs_dir(cache, "3.9.2").parent / "complete").exists()
    assert len(calls.read_text().splitlines()) == 1

    (tmp_path / "fixed").mkdir()
    working, _ = fake_mvn(tmp_path / "fixed")
    assert (await ensure_jars("3.9.2", cache, mvn=working)).is_dir()


async def test_real_maven_failure_names_the_fix_and_carries_maven_output(tmp_path):
    """A version Central lacks, resolved offline so the test never needs the network."""
    mvn = shutil.which("mvn")
    assert mvn is not None, "the test suite needs Maven on PATH"
    offline = tmp_path / "mvn-offline"
    offline.write_text(f'#!/bin/sh\nexec "{mvn}" -o "$@"\n')
    offline.chmod(0o755)

    with pytest.raises(LocalKafkaError) as caught:
        await ensure_jars("0.0.1-nonexistent", tmp_path / "cache", mvn=str(offline))

    message = str(caught.value)
    assert "Maven could not resolve Kafka 0.0.1-nonexistent" in message
    assert "check that the version exists on Maven Central" in message
    assert "[ERROR]" in caught.value.log_tail
    assert "\x1b[" not in caught.value.log_tail
