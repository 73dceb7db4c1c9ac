"""schemas: committed files equal the models, released files never change, compat checks."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from jsonschema import Draft202012Validator

from bridge import cli, schemas
from bridge.diff import ChangeKind

ROOT = Path(__file__).resolve().parent.parent / "schemas"

# A released schema file is never edited: a breaking change is a new version file. Add a line
# here when a version is released; never change one.
RELEASED = {
    "job-event/v1.json": "c8102d55847bd7f2d58c5d54894d1e5316ac41d5ecefdadf0956f6bdb655f6b9",
    "job-state/v1.json": "a7ad2b5e1556ffec960954f19edf437acc5454a0901db416fbdb78232d931cf9",
    "dead-letter/v1.json": "935c2e6ce46422de966718aca6b088b3df9ce526537d6ef812788520b1acdc3a",
    "watermark/v1.json": "d72d8979bf9312ef9c8b1e597f6c2e7ac4eea9c780f2477f023c9294d67c138c",
    "job-state/v2.json": "7e565855f930b37a321e9b83eab7220b71fbc1665d828c84b4611048fa5787df",
}


@pytest.mark.parametrize("relpath", sorted(RELEASED))
def test_released_file_is_pinned(relpath):
    assert hashlib.sha256((ROOT / relpath).read_bytes()).hexdigest() == RELEASED[relpath]


def test_committed_schemas_equal_the_models():
    assert schemas.check(ROOT) == []


def test_every_model_has_a_released_pin():
    assert {str(s.relpath) for s in schemas.SCHEMAS} == set(RELEASED)


@pytest.mark.parametrize("schema", schemas.SCHEMAS, ids=lambda s: s.name)
def test_files_are_draft_2020_12_with_id_and_title(schema):
    doc = orjson.loads((ROOT / schema.relpath).read_bytes())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://dli-bridge.invalid/schemas/{schema.name}/v{schema.version}.json"
    assert doc["title"] == schema.title


def test_wire_kinds_match_the_diff_kinds():
    assert set(get_args(schemas.EventKind)) == {kind.value for kind in ChangeKind}


def test_export_then_check_is_clean(tmp_path):
    written = schemas.export(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(RELEASED)
    assert schemas.check(tmp_path) == []


def test_check_names_missing_and_drifted_files(tmp_path):
    schemas.export(tmp_path)
    (tmp_path / "job-state" / "v1.json").unlink()
    drifted = tmp_path / "dead-letter" / "v1.json"
    drifted.write_bytes(drifted.read_bytes().replace(b'"error"', b'"err"'))
    problems = schemas.check(tmp_path)
    assert len(problems) == 2
    assert "job-state/v1.json: missing" in problems[0]
    assert "dead-letter/v1.json: differs from DeadLetterV1" in problems[1]


# --- the CLI -------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    """The subcommand as `dli-bridge` runs it, without reconfiguring this process's logging."""
    args = cli.build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_check_exits_zero_on_the_committed_tree(capsys):
    assert _run(["schemas", "check", "--dir", str(ROOT)]) == 0
    assert capsys.readouterr().err == ""


def test_cli_export_and_check_name_the_drifted_file(tmp_path, capsys):
    assert _run(["schemas", "export", "--dir", str(tmp_path)]) == 0
    assert "job-event/v1.json" in capsys.readouterr().out
    target = tmp_path / "job-event" / "v1.json"
    target.write_bytes(target.read_bytes() + b" ")
    assert _run(["schemas", "check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err
    assert "job-state" not in err


def test_cli_check_of_a_copy_is_clean(tmp_path):
    copy_root = tmp_path / "s"
    shutil.copytree(ROOT, copy_root)
    assert _run(["schemas", "check", "--dir", str(copy_root)]) == 0


# --- backward compatibility ----------------------------------------------------------------

BASE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "Inner": {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["n"],
        }
    },
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "count": {"type": "integer", "minimum": 0, "maximum": 10},
        "kind": {"enum": ["a", "b"], "type": "string"},
        "inner": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]},
        "free": {},
    },
    "required": ["id"],
}


def _edit(path: str, value: Any) -> dict[str, Any]:
    """BASE with the node at a slash path replaced (``value=...`` deletes it)."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split("/")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("name", "new"),
    [
        ("identical", BASE),
        ("optional property added", _edit("properties/extra", {"type": "string"})),
        ("type widened", _edit("properties/count/type", ["integer", "null"])),
        ("integer to number", _edit("properties/count/type", "number")),
        ("enum value added", _edit("properties/kind/enum", ["a", "b", "c"])),
        ("required dropped", _edit("required", [])),
        ("bound loosened", _edit("properties/count/maximum", 20)),
        ("lower bound loosened", _edit("properties/count/minimum", -5)),
        ("nested optional added", _edit("$defs/Inner/properties/m", {"type": "string"})),
        ("nullable made any", _edit("properties/inner", {})),
        ("pattern dropped", _edit("properties/id/pattern", ...)),
        ("any branch added", _edit("properties/count", {"anyOf": [{"type": "integer"}, {}]})),
    ],
)
def test_compatible_changes_pass(name, new):
    assert schemas.is_backward_compatible(BASE, new) == [], name


@pytest.mark.parametrize(
    ("new", "problem"),
    [
        (_edit("properties/count", ...), "/count: property removed"),
        (_edit("$defs/Inner/properties/n", ...), "/inner/n: property removed"),
        (_edit("properties/count/type", "string"), "/count: type narrowed, ['integer']"),
        (
            _edit("properties/inner/anyOf", [{"$ref": "#/$defs/Inner"}]),
            "/inner: type narrowed, ['null']",
        ),
        (_edit("properties/free", {"type": "string"}), "/free: type narrowed from any"),
        (
            _edit("$defs/Inner/properties/tags/items/type", "integer"),
            "/inner/tags/items: type narrowed",
        ),
        (_edit("required", ["id", "count"]), "/: new required properties ['count']"),
        (_edit("$defs/Inner/required", ["n", "tags"]), "/inner: new required properties ['tags']"),
        (_edit("properties/kind/enum", ["a"]), "/kind: enum values removed: ['b']"),
        (_edit("properties/id/enum", ["1"]), "/id: enum added"),
        (_edit("properties/count/maximum", 5), "/count: maximum tightened to 5"),
        (_edit("properties/count/minimum", 1), "/count: minimum tightened to 1"),
        (_edit("properties/id/minLength", 1), "/id: minLength tightened to 1"),
        (_edit("properties/id/pattern", "^[0-9]{3}$"), "/id: pattern changed"),
        (_edit("additionalProperties", False), "/: additional properties no longer allowed"),
    ],
)
def test_breaking_changes_are_reported(new, problem):
    problems = schemas.is_backward_compatible(BASE, new)
    assert any(p.startswith(problem) for p in problems), problems


def test_nullable_removed_still_checks_the_object_inside():
    new = _edit("properties/inner", {"$ref": "#/$defs/Inner"})
    new["$defs"]["Inner"]["properties"].pop("tags")
    problems = schemas.is_backward_compatible(BASE, new)
    assert problems[0].startswith("/inner: type narrowed, ['null']")
    assert "/inner/tags: property removed" in problems


def test_made_nullable_still_checks_the_object_inside():
    old = _edit("properties/inner", {"$ref": "#/$defs/Inner"})
    new = copy.deepcopy(BASE)
    new["$defs"]["Inner"]["required"] = ["n", "tags"]
    assert schemas.is_backward_compatible(old, new) == ["/inner: new required properties ['tags']"]


def test_recursive_refs_terminate():
    tree = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    assert schemas.is_backward_compatible(tree, copy.deepcopy(tree)) == []


def test_released_v1_files_are_compatible_with_themselves():
    for schema in schemas.SCHEMAS:
        doc = orjson.loads((ROOT / schema.relpath).read_bytes())
        assert schemas.is_backward_compatible(doc, copy.deepcopy(doc)) == []


def test_a_watermark_record_validates_against_its_schema():
    from datetime import UTC, datetime

    from bridge.events import watermark

    record = watermark(
        project_id="p-1", observed_through=datetime(2026, 1, 2, tzinfo=UTC), jobs=3, mode="list"
    )
    doc = orjson.loads((ROOT / "watermark/v1.json").read_bytes())
    assert record.value is not None
    Draft202012Validator(doc).validate(orjson.loads(record.value))
    assert record.key == b"p-1"


def test_job_event_v1_already_accepts_snapshot_events():
    """Issue 11's ``snapshot`` kind needs no new version: v1 was released with it reserved
    (kind enum and type pattern), so a v1 validator accepts a snapshot event as it is."""
    from datetime import UTC, datetime

    from bridge.diff import JobChange
    from bridge.events import EventOptions, build_event

    job = {"job_id": 7, "name": "j", "status": "job_running"}
    change = JobChange(ChangeKind.SNAPSHOT, (), (), "job_running", "job_running", None, job)
    record = build_event(
        change,
        project_id="p-1",
        job_id=7,
        job_name="j",
        sequence=4,
        observed_at=datetime(2026, 1, 2, tzinfo=UTC),
        previous_observed_at=None,
        options=EventOptions(region="r"),
    )
    doc = orjson.loads((ROOT / "job-event/v1.json").read_bytes())
    assert record.value is not None
    Draft202012Validator(doc).validate(orjson.loads(record.value))


def test_job_state_v2_accepts_every_v1_record_and_v1_readers_accept_v2():
    v1 = orjson.loads((ROOT / "job-state/v1.json").read_bytes())
    v2 = orjson.loads((ROOT / "job-state/v2.json").read_bytes())
    assert schemas.is_backward_compatible(v1, v2) == []
    from datetime import UTC, datetime

    from bridge.events import parse_state, state_record

    record = state_record(
        project_id="p", job_id=1, sequence=2, snapshot=b"{}", fingerprint=b"\x01" * 16,
        row_fingerprint=None, observed_at=datetime(2026, 1, 2, tzinfo=UTC), answered=("r-1",),
    )  # fmt: skip
    assert record.value is not None
    for doc in (v1, v2):
        Draft202012Validator(doc).validate(orjson.loads(record.value))
    assert parse_state(record.value).answered == ("r-1",)
