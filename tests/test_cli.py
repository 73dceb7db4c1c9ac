"""The command line: parsing, error reporting and the signal-driven serve loop."""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest

from bridge import __version__, cli


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
