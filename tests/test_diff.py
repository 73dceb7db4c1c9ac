"""diff: kinds and precedence, JSON Pointers, RFC 6902 patches, possibly_missed reasons."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.diff import DEFAULT_IGNORE, ChangeKind, diff, without_ignored

RUNNING = "job_running"


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_id": 104,
        "name": "orders",
        "status": RUNNING,
        "duration": 1000,
        "restart_times": 0,
        "job_config": {"cu_number": 2, "checkpoint_enabled": True, "dependency_jars": ["a"]},
    }
    job.update(fields)
    return job


# --- kinds and precedence ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "first_sweep", "kind"),
    [
        (None, _job(), False, ChangeKind.CREATED),
        (None, _job(), True, ChangeKind.DISCOVERED),
        (_job(), None, False, ChangeKind.DELETED),
        (_job(), None, True, ChangeKind.DELETED),
        (_job(), _job(status="job_canceling"), False, ChangeKind.STATUS_CHANGED),
        (_job(), _job(status="job_canceling", name="x"), False, ChangeKind.STATUS_CHANGED),
        (_job(), _job(name="x"), False, ChangeKind.UPDATED),
        (_job(), _job(name="x"), True, ChangeKind.UPDATED),
    ],
)
def test_kind_follows_design_precedence(before, after, first_sweep, kind):
    change = diff(before, after, first_sweep=first_sweep)
    assert change is not None
    assert change.kind is kind


def test_nothing_before_and_after_is_no_change():
    assert diff(None, None) is None


def test_created_carries_the_snapshot_and_no_patch():
    after = _job(status="job_submitting")
    change = diff(None, after)
    assert change is not None
    assert (change.before, change.after, change.changed, change.patch) == (None, after, (), ())
    assert (change.status_before, change.status_after) == (None, "job_submitting")
    assert not change.possibly_missed


def test_deleted_carries_the_last_snapshot():
    before = _job()
    change = diff(before, None)
    assert change is not None
    assert (change.before, change.after, change.status_before, change.status_after) == (
        before,
        None,
        RUNNING,
        None,
    )


# --- pointers and patch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "changed", "patch"),
    [
        (
            _job(),
            _job(job_config={"cu_number": 4, "checkpoint_enabled": True, "dependency_jars": ["a"]}),
            ("/job_config/cu_number",),
            [{"op": "replace", "path": "/job_config/cu_number", "value": 4}],
        ),
        (
            _job(),
            _job(job_config={"cu_number": 2, "checkpoint_enabled": True, "dependency_jars": ["b"]}),
            ("/job_config/dependency_jars",),
            [{"op": "replace", "path": "/job_config/dependency_jars", "value": ["b"]}],
        ),
        (
            _job(),
            {k: v for k, v in _job().items() if k != "name"},
            ("/name",),
            [{"op": "remove", "path": "/name"}],
        ),
        (
            _job(),
            _job(**{"a/b~c": 1}),
            ("/a~1b~0c",),
            [{"op": "add", "path": "/a~1b~0c", "value": 1}],
        ),
        (
            _job(job_config=None),
            _job(job_config={"cu_number": 1}),
            ("/job_config",),
            [{"op": "replace", "path": "/job_config", "value": {"cu_number": 1}}],
        ),
        (_job(), _job(restart_times=0.0), ("/restart_times",), None),
        (_job(has_savepoint=1), _job(has_savepoint=True), ("/has_savepoint",), None),
        (_job(edge=[1, {"a": 1}]), _job(edge=[1, {"a": True}]), ("/edge",), None),
        (_job(edge=[1, 2]), _job(edge=[1, 2, 3]), ("/edge",), None),
    ],
)
def test_changed_fields_are_leaf_pointers_with_a_patch(before, after, changed, patch):
    change = diff(before, after)
    assert change is not None
    assert change.changed == changed
    if patch is not None:
        assert list(change.patch) == patch
    assert jsonpatch.apply_patch(_minus(before), list(change.patch)) == _minus(after)


def test_equal_lists_with_nested_objects_are_no_change():
    doc = _job(edge=[{"a": [1, {"b": None}]}, "x"])
    assert diff(doc, copy.deepcopy(doc)) is None


def test_ignored_fields_alone_are_no_change():
    assert diff(_job(duration=1), _job(duration=2)) is None
    assert diff(_job(duration=1), {k: v for k, v in _job().items() if k != "duration"}) is None


def test_ignore_is_configurable_by_name_and_pointer():
    before = _job()
    after = _job(
        name="x",
        job_config={"cu_number": 9, "checkpoint_enabled": True, "dependency_jars": ["a"]},
    )
    assert diff(before, after, ignore=("name", "/job_config/cu_number")) is None
    change = diff(before, after, ignore=())
    assert change is not None
    assert change.changed == ("/job_config/cu_number", "/name")


@pytest.mark.parametrize(
    "ignore",
    [("job_config", "/job_config/cu_number"), ("/job_config/cu_number", "job_config")],
)
def test_ignoring_a_parent_covers_its_children(ignore):
    after = _job(job_config={"cu_number": 9})
    assert diff(_job(), after, ignore=ignore) is None


def test_pointer_ignore_under_a_non_object_is_harmless():
    change = diff(_job(job_config=None), _job(job_config=None, name="y"), ignore=("/job_config/x",))
    assert change is not None
    assert change.changed == ("/name",)


def test_pointer_ignore_unescapes_tokens():
    before, after = _job(**{"a/b": {"c~d": 1}}), _job(**{"a/b": {"c~d": 2}})
    assert diff(before, after, ignore=("/a~1b/c~0d",)) is None


def test_inputs_are_not_mutated():
    before, after = _job(), _job(duration=5, name="z")
    saved = copy.deepcopy((before, after))
    change = diff(before, after)
    assert (before, after) == saved
    assert change is not None
    assert change.before is before
    assert change.after is after


def test_without_ignored_drops_default_volatile_fields():
    assert "duration" not in without_ignored(_job())
    assert without_ignored({"name": "n"}) == {"name": "n"}
    assert without_ignored({"name": "n", "duration": 1}, ("duration", "gone")) == {"name": "n"}
    assert DEFAULT_IGNORE == ("duration",)


# --- possibly_missed -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        # legal direct move: nothing missed
        (_job(status="job_submitting"), _job(status=RUNNING), None),
        # running -> submitting is not a direct move (a failure in between)
        (_job(status=RUNNING), _job(status="job_submitting"), "illegal_transition"),
        (_job(status=RUNNING), _job(status="job_new_in_2030"), "illegal_transition"),
        (_job(restart_times=1), _job(restart_times=3, name="n"), "restarts_skipped"),
        (
            _job(status="job_running_exception", restart_times=1),
            _job(status=RUNNING, restart_times=3),
            "restarts_skipped",
        ),
        (_job(restart_times=1), _job(restart_times=2), "restart_between_polls"),
        # one restart with a legal status move: that move is the restart
        (
            _job(status="job_running_exception", restart_times=1),
            _job(status=RUNNING, restart_times=2),
            None,
        ),
        (_job(restart_times=3), _job(restart_times=0), None),  # a reset, not a gap
        (_job(restart_times=None), _job(restart_times=4), None),
        (_job(restart_times=1), _job(restart_times="4"), None),
        (_job(status=None), _job(status=RUNNING), None),  # no judgement without a status
        (_job(status=RUNNING), _job(status=None), None),
    ],
)
def test_possibly_missed_reasons(before, after, reason):
    change = diff(before, after)
    assert change is not None
    assert change.missed_reason == reason
    assert change.possibly_missed is (reason is not None)


# --- properties ----------------------------------------------------------------------------

_keys = st.sampled_from(["status", "name", "duration", "restart_times", "job_config", "a/b", "~"])
_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.text(max_size=3)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)
_docs = st.dictionaries(_keys, _values, max_size=7)


def _minus(doc: dict[str, Any], ignore: tuple[str, ...] = DEFAULT_IGNORE) -> dict[str, Any]:
    return without_ignored(doc, ignore)


@settings(max_examples=400, deadline=None)
@given(before=_docs, after=_docs)
def test_patch_turns_before_into_after_minus_ignored(before, after):
    change = diff(before, after)
    if change is None:
        assert jsonpatch.apply_patch(_minus(before), []) == _minus(after)
        return
    assert jsonpatch.apply_patch(_minus(before), list(change.patch)) == _minus(after)


@settings(max_examples=200, deadline=None)
@given(doc=_docs)
def test_identical_snapshots_give_no_change(doc):
    assert diff(doc, copy.deepcopy(doc)) is None


@settings(max_examples=300, deadline=None)
@given(before=_docs, after=_docs)
def test_every_changed_field_is_reported_once(before, after):
    change = diff(before, after)
    paths = [op["path"] for op in change.patch] if change else []
    assert len(paths) == len(set(paths))
    assert (change.changed if change else ()) == tuple(sorted(paths))
    top = {k for k in before.keys() | after.keys() if k != "duration"}
    differing = {k for k in top if _canon(before.get(k, _ABSENT)) != _canon(after.get(k, _ABSENT))}
    reported = {_unescape(p.split("/")[1]) for p in paths}
    assert reported == differing


@settings(max_examples=200, deadline=None)
@given(doc=_docs, durations=st.tuples(_values, _values))
def test_only_ignored_field_changes_give_no_change(doc, durations):
    before, after = dict(doc), dict(doc)
    before["duration"], after["duration"] = durations
    assert diff(before, after) is None


_ABSENT = object()


def _canon(value: Any) -> Any:
    """A value in a form where ``==`` is JSON equality (type-tagged)."""
    if isinstance(value, dict):
        return ("d", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("l", tuple(_canon(v) for v in value))
    return (type(value).__name__, value)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")
