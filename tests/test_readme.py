"""The README stays true: its commands, TOML examples, subcommands and configuration table."""

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bridge.cli import build_parser, main
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# global options of `dli-bridge` that take a value (they may stand before the subcommand)
_GLOBAL_VALUE_OPTIONS = {"--log-level", "--log-format"}
_SECRET_KEYS = {"sk", "security_token", "password", "sasl_password"}


def section(title: str) -> str:
    """The text under ``## title`` up to the next second-level heading."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def setup_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", section("Set-up"), flags=re.S)


def ci_commands() -> list[str]:
    """.ci/run's command lines: no comments, no shell set-up (set, cd)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", "set ", "cd "))]


def test_setup_has_exactly_two_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)


def test_ci_ends_with_the_readme_test_command():
    """Last, because a failure inside an ``a && b`` list does not stop a ``set -e`` script:
    only as the last line is the list's status the status CI sees."""
    test_command = setup_commands()[1]
    assert "pytest" in test_command
    assert ci_commands()[-1] == test_command


def test_main_command_is_the_demo():
    assert setup_commands()[0].endswith(".venv/bin/dli-bridge demo")


def test_readme_points_at_nothing_outside_the_repository():
    assert "../shared" not in README
    assert "DESIGN.md" not in README
    assert "reference/dli-api" not in README


def _code() -> list[str]:
    """Fenced blocks and inline code spans of the README."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", README, flags=re.S)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def documented_subcommands() -> set[str]:
    found = set()
    for code in _code():
        for line in code.splitlines():
            words = line.split()
            for i, word in enumerate(words):
                if not re.fullmatch(r"(?:\S*/)?dli-bridge", word):
                    continue
                rest = words[i + 1 :]
                while rest and rest[0].startswith("-"):
                    rest = rest[2:] if rest[0] in _GLOBAL_VALUE_OPTIONS else rest[1:]
                if rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
                    found.add(rest[0])
    return found


def test_every_documented_subcommand_exists():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    documented = documented_subcommands()
    assert {"demo", "run", "tail", "check-config", "schemas", "bench"} <= documented
    assert documented <= set(sub.choices)  # type: ignore[arg-type]


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README, flags=re.S)


def _secrets(doc: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            found += _secrets(value)
        elif key in _SECRET_KEYS and isinstance(value, str):
            found.append(value)
    return found


@pytest.mark.parametrize("index", range(2))
def test_toml_examples_pass_check_config(index, tmp_path, monkeypatch, capsys):
    blocks = toml_blocks()
    assert len(blocks) >= 2, "the README shows an AK/SK and an IAM password example"
    for name in [n for n in os.environ if n.upper().startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "config.toml"
    path.write_text(blocks[index])
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    effective = json.loads(out.out)
    doc = tomllib.loads(blocks[index])
    assert effective["auth"]["mode"] == doc["auth"]["mode"]
    for secret in _secrets(doc):
        assert secret not in out.out + out.err


def test_toml_examples_cover_both_credentials():
    modes = {tomllib.loads(block)["auth"]["mode"] for block in toml_blocks()}
    assert {"aksk", "token"} <= modes


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _leaves(annotation, f"{prefix}{name}.")
        else:
            keys[prefix + name] = field.get_default(call_default_factory=True)
    return keys


def _cell(default: Any) -> str:
    return "none" if default is None else f"`{json.dumps(default)}`"


def documented_keys() -> dict[str, str]:
    rows = re.findall(
        r"^\| `([a-z_.]+)` \| ([^|]+) \|", section("Configuration reference"), flags=re.M
    )
    return {key: cell.strip() for key, cell in rows}


def test_configuration_reference_lists_every_key_with_its_default():
    expected = {key: _cell(default) for key, default in _leaves(Settings).items()}
    documented = documented_keys()
    missing = [
        f"| `{key}` | {cell} | UNIT | MEANING |"
        for key, cell in expected.items()
        if key not in documented
    ]
    assert not missing, "add to the README's Configuration reference:\n" + "\n".join(missing)
    unknown = sorted(set(documented) - set(expected))
    assert not unknown, f"the README documents keys Settings does not have: {unknown}"
    wrong = {k: (documented[k], expected[k]) for k in expected if documented[k] != expected[k]}
    assert not wrong, f"defaults in the README differ from Settings (README, code): {wrong}"
