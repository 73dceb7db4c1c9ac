"""The command line: parsing, error reporting and the signal-driven serve loop."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from bridge import __version__, cli
from bridge.errors import ConfigError


def test_version_prints_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dli-bridge {__version__}"


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "--ak", "A1", "--ak", "A2", "--sk", "S1"], "--ak and --sk come in pairs"),
        (["simulate", "--user", "alice"], "no password for user 'alice'"),
    ],
)
def test_bad_simulate_flags_exit_2_naming_the_problem(argv, message, capsys):
    assert cli.main(["--log-format", "plain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dli-bridge simulate: ")
    assert message in err


def test_bad_user_flag_does_not_echo_other_passwords(capsys):
    assert cli.main(["simulate", "--user", "bob:s3cret", "--user", "alice"]) == 2
    assert "s3cret" not in capsys.readouterr().err


class Resource:
    """Records its lifetime; optionally slow to enter, to test a signal during start-up."""

    def __init__(self, enter_delay_s: float = 0.0) -> None:
        self.enter_delay_s = enter_delay_s
        self.events: list[str] = []

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[str]:
        self.events.append("enter")
        try:
            await asyncio.sleep(self.enter_delay_s)
            yield "value"
        finally:
            self.events.append("exit")


async def test_serve_until_signalled_announces_then_exits_cleanly_on_sigterm():
    resource = Resource()
    announced: list[str] = []

    def announce(value: str) -> None:
        announced.append(value)
        os.kill(os.getpid(), signal.SIGTERM)

    await cli.serve_until_signalled(resource.open(), announce)
    assert announced == ["value"]
    assert resource.events == ["enter", "exit"]


async def test_serve_until_signalled_stops_start_up_on_sigint():
    resource = Resource(enter_delay_s=60)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
    await cli.serve_until_signalled(resource.open(), lambda _: pytest.fail("announced"))
    assert resource.events == ["enter", "exit"]


async def test_serve_until_signalled_propagates_other_cancellation():
    resource = Resource(enter_delay_s=60)
    task = asyncio.create_task(cli.serve_until_signalled(resource.open(), lambda _: None))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert resource.events == ["enter", "exit"]
    # the handlers are gone: SIGTERM's disposition is back to the default
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --- edges a newcomer hit: one clear line and exit status 2, never a traceback ----------------


def test_unknown_log_level_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--log-level", "BOGUS", "check-config", "x.toml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice: 'BOGUS'" in err
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'" in err
    assert "Traceback" not in err


def test_log_level_is_case_insensitive(tmp_path, capsys):
    assert cli.main(["--log-level", "debug", "check-config", str(tmp_path / "absent")]) == 2


@pytest.mark.parametrize("port", ["-1", "70000", "65536", "http"])
def test_local_kafka_port_out_of_range_is_refused(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["local-kafka", "--port", port])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: '{port}' is not a port: give a number from 0 to 65535" in err
    assert "Traceback" not in err


def test_port_number_accepts_the_whole_range():
    assert [cli.port_number(p) for p in ("0", "1", "65535")] == [0, 1, 65535]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["--log-format", "plain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_local_kafka_names_supported_versions(capsys):
    code, _, err = run_cli(["local-kafka", "--kafka-version", "2.7.2"], capsys)
    assert code == 2
    assert err.startswith("dli-bridge local-kafka: Kafka 2.7.2 is not supported: ")
    assert "3.3 or newer" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_local_kafka_unusable_cache_dir_says_how_to_fix_it(kind, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cache = a_file if kind == "file" else Path("/proc/dli-bridge-cache")
    argv = ["local-kafka", "--kafka-version", "3.9.999", "--cache-dir", str(cache)]
    code, _, err = run_cli([*argv, "--java", sys.executable], capsys)
    assert code == 2
    assert err.startswith(f"dli-bridge local-kafka: the jar cache {cache} is not usable (")
    assert "pass --cache-dir DIR or set BRIDGE_CACHE_DIR" in err
    assert len(err.strip().splitlines()) == 1


def test_local_kafka_missing_java_says_how_to_pass_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    argv = ["local-kafka", "--java", "/nonexistent/java", "--cache-dir", str(tmp_path)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert "Java ('/nonexistent/java') was not found: install a JDK" in err
    assert "set JAVA_HOME to its installation directory, or pass the executable with --java" in err


# --- check-config ------------------------------------------------------------------------------

SECRET = "s3cr3t-never-printed"

GOOD_CONFIG = f"""\
[api]
endpoint = "http://127.0.0.1:8780"
[auth]
mode = "aksk"
ak = "AKID"
sk = "{SECRET}"
[projects]
discover = true
[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_username = "bridge"
sasl_password = "{SECRET}"
"""


@pytest.fixture
def no_bridge_env(monkeypatch):
    """check-config reads the process environment too; the caller's must not leak in."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def test_check_config_prints_the_effective_config_with_secrets_masked(
    tmp_path, capsys, no_bridge_env
):
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD_CONFIG)
    code, out, err = run_cli(["check-config", str(path)], capsys)
    assert code == 0, err
    effective = orjson.loads(out)
    assert effective["projects"] == {"ids": [], "discover": True}
    assert effective["polling"]["interval_s"] == 30.0
    assert effective["kafka"]["topics"]["events"] == "dli.jobs.events"
    assert effective["auth"]["sk"] == "**********"
    assert effective["kafka"]["sasl_password"] == "**********"
    assert SECRET not in out + err


def test_check_config_environment_wins_over_the_file(tmp_path, capsys, no_bridge_env, monkeypatch):
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD_CONFIG)
    monkeypatch.setenv("BRIDGE_KAFKA__TOPICS__EVENTS", "mine")
    code, out, _ = run_cli(["check-config", str(path)], capsys)
    assert code == 0
    assert orjson.loads(out)["kafka"]["topics"]["events"] == "mine"


def test_check_config_reports_every_mistake_at_once_without_secrets(
    tmp_path, capsys, no_bridge_env
):
    path = tmp_path / "bridge.toml"
    broken = (
        GOOD_CONFIG.replace("discover = true", 'ids = ["p-1"]\ndiscover = true')
        .replace("[kafka]", "[kafka]\npartitions = 0")
        .replace('endpoint = "http', 'request_timeout_s = true\nendpoint = "http')
    )
    path.write_text(broken)
    code, out, err = run_cli(["check-config", str(path)], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("dli-bridge check-config: invalid configuration\n")
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, err
    assert "  - api.request_timeout_s: must be a number, not true" in problems
    assert "  - projects: set either ids or discover = true, not both" in problems
    assert any(p.startswith("  - kafka.partitions: ") for p in problems)
    assert SECRET not in out + err


def test_check_config_missing_file_exits_2(tmp_path, capsys, no_bridge_env):
    code, _, err = run_cli(["check-config", str(tmp_path / "absent.toml")], capsys)
    assert code == 2
    assert "absent.toml: not found" in err


def test_check_config_into_a_closed_pipe_exits_quietly(tmp_path, no_bridge_env):
    """`dli-bridge check-config FILE | head`: the reader leaves early, no traceback."""
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD_CONFIG)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "check-config", str(path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert b"Traceback" not in done.stderr
    assert done.stderr == b""


# --- stopping: tail and demo stop quietly, long-running services say so --------------------


class ForeverReader:
    """Stands in for tail.EventReader: signals the process once entered, then waits."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    async def __aenter__(self) -> "ForeverReader":
        os.kill(os.getpid(), signal.SIGTERM)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def __aiter__(self) -> "ForeverReader":
        return self

    async def __anext__(self) -> dict[str, object]:
        await asyncio.get_running_loop().create_future()
        raise StopAsyncIteration


def test_tail_stops_on_sigterm_without_a_log_line(capsys, monkeypatch, no_bridge_env):
    from bridge import tail

    monkeypatch.setattr(tail, "EventReader", ForeverReader)
    code, out, err = run_cli(["tail", "--bootstrap-servers", "127.0.0.1:1"], capsys)
    assert code == 0
    assert (out, err) == ("", "")


async def test_services_still_log_the_signal_that_stopped_them(caplog):
    resource = Resource()
    with caplog.at_level("INFO", logger="bridge.cli"):
        await cli.serve_until_signalled(
            resource.open(), lambda _: os.kill(os.getpid(), signal.SIGTERM)
        )
    assert [r.getMessage() for r in caplog.records] == ["stopped on SIGTERM"]


# --- run: exit status by what went wrong -------------------------------------------------------


def test_run_with_an_unreachable_broker_exits_1_in_one_line(tmp_path, capsys, no_bridge_env):
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[api]\nendpoint = "http://127.0.0.1:1"\n[auth]\nmode = "none"\n'
        '[projects]\nids = ["p-1"]\n[kafka]\nbootstrap_servers = "127.0.0.1:1"\n'
        '[http]\nbind = "127.0.0.1:0"\n'
    )
    code, _, err = run_cli(["--log-level", "WARNING", "run", "--config", str(path)], capsys)
    assert code == cli.EXIT_UNAVAILABLE == 1
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err
    [line] = err.splitlines()
    assert line.startswith("dli-bridge run: ")
    assert "127.0.0.1:1" in line


def test_run_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 " in out
    assert "1 unavailable" in out
    assert "2 invalid configuration" in out


def test_config_errors_exit_2_and_unavailability_1():
    from bridge.errors import MembershipError, SinkUnavailable

    assert cli.exit_code(ConfigError("bad")) == 2
    assert cli.exit_code(SinkUnavailable("gone")) == 1
    assert cli.exit_code(MembershipError("refused")) == 1
