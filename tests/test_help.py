"""`dli-bridge --help` is the first thing a newcomer reads: every command, one line each."""

import re

import pytest

from bridge import cli

# the order a newcomer needs them in (issue 8), then the developers' benchmark
COMMANDS = [
    "run", "demo", "tail", "simulate", "resnapshot", "schemas", "check-config", "local-kafka",
    "bench",
]  # fmt: skip


@pytest.fixture
def top_help(monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal: pin a common one
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out: str = capsys.readouterr().out
    return out


def listed(help_text: str) -> dict[str, list[str]]:
    """Each command of the COMMAND block with its help lines (continuations included)."""
    block = help_text.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    commands: dict[str, list[str]] = {}
    for line in block.splitlines():
        if match := re.fullmatch(r"    (\S+)\s+(.*)", line):
            commands[match[1]] = [match[2]]
        else:
            list(commands.values())[-1].append(line.strip())
    return commands


def test_top_level_help_lists_every_command_in_order(top_help):
    assert list(listed(top_help)) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_one_line_summary(top_help, command):
    lines = listed(top_help)[command]
    assert len(lines) == 1, f"{command}'s help wraps at 80 columns: {' '.join(lines)!r}"
    assert lines[0]


def test_description_says_what_it_does_and_where_to_start(top_help):
    assert "DLI" in top_help
    assert "Kafka" in top_help
    assert "dli-bridge demo" in top_help


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: dli-bridge {command}" in capsys.readouterr().out
