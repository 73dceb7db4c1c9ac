"""Kafka jars from Maven Central: versions, logging backends, the per-version cache."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bridge import kafkajars
from bridge.errors import LocalKafkaError
from bridge.kafkajars import (
    DEFAULT_KAFKA_VERSION,
    check_version,
    default_cache_dir,
    default_kafka_version,
    ensure_jars,
    find_mvn,
    libs_dir,
    logging_backend,
)

ENV_NAMES = (
    "BRIDGE_CACHE_DIR",
    "DLI_BRIDGE_CACHE_DIR",
    "BRIDGE_KAFKA_VERSION",
    "DLI_BRIDGE_KAFKA_VERSION",
    "XDG_CACHE_HOME",
    "JAVA_HOME",
    "MAVEN_HOME",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No variable that steers the jar cache or the tools is inherited from the caller."""
    monkeypatch.setenv("HOME", "/home/u")
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BRIDGE_CACHE_DIR": "/c/mine", "XDG_CACHE_HOME": "/x"}, "/c/mine"),
        ({"BRIDGE_CACHE_DIR": "/c/new", "DLI_BRIDGE_CACHE_DIR": "/c/old"}, "/c/new"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/dli-bridge"),
        ({"XDG_CACHE_HOME": "relative/ignored"}, "/home/u/.cache/dli-bridge"),
        ({"BRIDGE_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, "/home/u/.cache/dli-bridge"),
        ({}, "/home/u/.cache/dli-bridge"),
    ],
)
def test_default_cache_dir_follows_environment(clean_env, env, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert default_cache_dir() == Path(expected)


def test_relative_cache_dir_from_environment_is_made_absolute(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    clean_env.setenv("BRIDGE_CACHE_DIR", "rel/cache")
    assert default_cache_dir() == tmp_path / "rel" / "cache"


@pytest.mark.parametrize(
    ("old", "new", "value", "read"),
    [
        ("DLI_BRIDGE_CACHE_DIR", "BRIDGE_CACHE_DIR", "/c/old", lambda: str(default_cache_dir())),
        ("DLI_BRIDGE_KAFKA_VERSION", "BRIDGE_KAFKA_VERSION", "4.1.2", default_kafka_version),
    ],
)
def test_old_environment_names_still_work_with_a_deprecation_warning(
    clean_env, caplog, old, new, value, read
):
    clean_env.setenv(old, value)
    with pytest.deprecated_call(match=f"{old} is deprecated .* set {new} instead"):
        assert read() == value
    assert f"set {new} instead" in caplog.text


def test_default_kafka_version_is_pinned_unless_set(clean_env):
    assert default_kafka_version() == DEFAULT_KAFKA_VERSION
    clean_env.setenv("BRIDGE_KAFKA_VERSION", "4.1.2")
    assert default_kafka_version() == "4.1.2"


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


@pytest.mark.parametrize("version", ["2.7.2", "3.2.3", "0.10.0", "1.1.1"])
def test_check_version_rejects_kafka_without_the_kraft_storage_tool(version):
    with pytest.raises(LocalKafkaError) as caught:
        check_version(version)
    message = str(caught.value)
    assert message.startswith(f"Kafka {version} is not supported: ")
    assert "3.3 or newer" in message
    assert "\n" not in message


def test_check_version_accepts_the_oldest_kraft_line():
    assert check_version("3.3.0") == (3, 3)


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
pom=
for arg in "$@"; do
  [ "$pom" = next ] && pom="$arg"
  case "$arg" in
    -f) pom=next ;;
    -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}" ;;
    -Dkafka.version=*) version="${{arg#-Dkafka.version=}}" ;;
  esac
done
# as Maven does: -f is read relative to the working directory (the staging dir)
[ -f "$pom" ] || {{ echo "[ERROR] The specified user settings file does not exist: $pom"; exit 1; }}
echo "Downloading from central: https://repo/org/x/a/1/a-1.pom"
echo "Downloaded from central: https://repo/org/x/a/1/a-1.pom (2 kB at 1 MB/s)"
echo "Downloaded from central: https://repo/org/x/a/1/a-1.jar (12 kB at 1 MB/s)"
echo "[INFO] Downloaded from central: https://repo/org/y/b/2/b-2.jar (3 MB at 9 MB/s)"
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


async def test_failed_resolution_leaves_nothing_behind_and_retries_next_time(tmp_path):
    failing, calls = fake_mvn(tmp_path, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(LocalKafkaError, match=r"Maven could not resolve Kafka 3\.9\.2") as caught:
        await ensure_jars("3.9.2", cache, mvn=failing)
    assert "Could not find artifact kafka_2.13:3.9.2" in caught.value.log_tail
    assert not libs_dir(cache, "3.9.2").parent.exists()  # no lock, staging or marker
    assert len(calls.read_text().splitlines()) == 1

    (tmp_path / "fixed").mkdir()
    working, _ = fake_mvn(tmp_path / "fixed")
    assert (await ensure_jars("3.9.2", cache, mvn=working)).is_dir()


async def test_progress_reports_each_downloaded_jar(tmp_path):
    mvn, calls = fake_mvn(tmp_path)
    seen: list[str] = []
    await ensure_jars("3.9.2", tmp_path / "cache", mvn=mvn, progress=seen.append)
    assert seen[0] == "resolving Kafka 3.9.2 from Maven Central (first use of this version)"
    assert seen[1:3] == [
        "resolving Kafka 3.9.2: 1 jars downloaded (a-1.jar)",
        "resolving Kafka 3.9.2: 2 jars downloaded (b-2.jar)",
    ]
    assert seen[3].startswith("cached 1 Kafka 3.9.2 jars in ")
    args = calls.read_text().split()
    assert "-q" not in args  # Maven names what it downloads only when not quiet
    assert "-ntp" not in args


async def test_success_leaves_only_jars_and_marker(tmp_path):
    mvn, _ = fake_mvn(tmp_path)
    libs = await ensure_jars("3.9.2", tmp_path / "cache", mvn=mvn)
    assert sorted(p.name for p in libs.parent.iterdir()) == ["complete", "libs"]


async def test_relative_cache_dir_works(tmp_path, monkeypatch):
    """Maven runs in the staging dir: every path it gets must be absolute."""
    mvn, _ = fake_mvn(tmp_path)
    monkeypatch.chdir(tmp_path)
    libs = await ensure_jars("3.9.2", Path("rel-cache"), mvn=mvn)
    assert libs == tmp_path / "rel-cache" / "kafka" / "3.9.2" / "libs"
    assert (libs / "kafka_2.13-3.9.2.jar").is_file()


@pytest.mark.parametrize("kind", ["file", "under a file", "unwritable"])
async def test_unusable_cache_dir_says_how_to_choose_another(tmp_path, kind):
    (tmp_path / "a-file").write_text("x")
    cache = {
        "file": tmp_path / "a-file",
        "under a file": tmp_path / "a-file" / "cache",
        "unwritable": Path("/proc/dli-bridge-cache"),  # root ignores file modes; /proc does not
    }[kind]
    mvn, calls = fake_mvn(tmp_path)
    with pytest.raises(LocalKafkaError) as caught:
        await ensure_jars("3.9.2", cache, mvn=mvn)
    message = str(caught.value)
    assert message.startswith(f"the jar cache {cache} is not usable (")
    assert "pass --cache-dir DIR or set BRIDGE_CACHE_DIR to a writable directory" in message
    assert not calls.exists()


def maven_home(tmp_path: Path) -> tuple[Path, Path]:
    """A MAVEN_HOME whose bin/mvn is the stand-in; returns it and the stand-in's call log."""
    home = tmp_path / "maven"
    (home / "bin").mkdir(parents=True)
    script, calls = fake_mvn(tmp_path)
    Path(script).rename(home / "bin" / "mvn")
    return home, calls


async def test_maven_home_is_honoured(clean_env, tmp_path):
    home, calls = maven_home(tmp_path)
    clean_env.setenv("MAVEN_HOME", str(home))
    assert (await ensure_jars("3.9.2", tmp_path / "cache")).is_dir()
    assert calls.exists()


@pytest.mark.parametrize(
    ("explicit", "home", "shown"),
    [
        ("/nonexistent/mvn", None, "Maven ('/nonexistent/mvn') was not found: install Maven"),
        (None, "/nonexistent", "Maven ('/nonexistent/bin/mvn' from MAVEN_HOME=/nonexistent)"),
    ],
)
def test_missing_maven_names_every_way_to_provide_it(clean_env, explicit, home, shown):
    if home:
        clean_env.setenv("MAVEN_HOME", home)
    with pytest.raises(LocalKafkaError) as caught:
        find_mvn(explicit)
    message = str(caught.value)
    assert message.startswith(shown)
    assert (
        "set MAVEN_HOME to its installation directory, or pass the executable with --mvn PATH"
        in message
    )


async def test_real_maven_failure_names_the_fix_and_carries_maven_output(tmp_path):
    """A version Central lacks, resolved offline so the test never needs the network."""
    mvn = shutil.which("mvn")
    assert mvn is not None, "the test suite needs Maven on PATH"
    offline = tmp_path / "mvn-offline"
    offline.write_text(f'#!/bin/sh\nexec "{mvn}" -o "$@"\n')
    offline.chmod(0o755)

    with pytest.raises(LocalKafkaError) as caught:
        await ensure_jars("3.9.999-nonexistent", tmp_path / "cache", mvn=str(offline))

    message = str(caught.value)
    assert "Maven could not resolve Kafka 3.9.999-nonexistent" in message
    assert "check that the version exists on Maven Central" in message
    assert "[ERROR]" in caught.value.log_tail
    assert "\x1b[" not in caught.value.log_tail
