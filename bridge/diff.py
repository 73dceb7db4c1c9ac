"""What changed between two snapshots of a job: kind, JSON Pointers, RFC 6902 patch, gaps."""

from __future__ import annotations

import enum
import functools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from bridge import lifecycle
from bridge.models import JsonDict

__all__ = [
    "DEFAULT_IGNORE",
    "ChangeKind",
    "JobChange",
    "diff",
    "without_ignored",
]

# Volatile fields: `duration` ticks on every poll of a running job and says nothing new.
DEFAULT_IGNORE: tuple[str, ...] = ("duration",)

# A compiled ignore list: each key maps to None (drop it) or to the subtree to drop inside it.
_Tree = dict[str, "_Tree | None"]


class ChangeKind(enum.StrEnum):
    """The kind of one job change; DESIGN ranks deleted > created/discovered > status > updated."""

    DISCOVERED = "discovered"  # there before the first sweep began (Debezium's "r")
    CREATED = "created"
    STATUS_CHANGED = "status_changed"
    UPDATED = "updated"
    DELETED = "deleted"
    SNAPSHOT = "snapshot"  # reserved for issue 11 (a full re-publication)


@dataclass(frozen=True, slots=True)
class JobChange:
    """One poll's change of one job.

    ``changed`` and ``patch`` describe ``before`` → ``after`` with ignored fields removed; both
    are empty for created, discovered and deleted jobs (the snapshot itself is the news).
    ``before``/``after`` are the snapshots as given, ignored fields included.
    """

    kind: ChangeKind
    changed: tuple[str, ...]
    patch: tuple[JsonDict, ...]
    status_before: str | None
    status_after: str | None
    before: JsonDict | None
    after: JsonDict | None
    possibly_missed: bool = False
    missed_reason: str | None = None  # "illegal_transition" | "restarts_skipped" | ...


def diff(
    before: JsonDict | None,
    after: JsonDict | None,
    *,
    ignore: Collection[str] = DEFAULT_IGNORE,
    first_sweep: bool = False,
) -> JobChange | None:
    """The change from ``before`` to ``after`` (None = absent), or None when nothing counts.

    Nested objects are compared field by field (``/job_config/cu_number``); lists and scalars
    as whole values, so a reordered list is a change.
    """
    if after is None:
        if before is None:
            return None
        return _whole(ChangeKind.DELETED, before, None)
    if before is None:
        kind = ChangeKind.DISCOVERED if first_sweep else ChangeKind.CREATED
        return _whole(kind, None, after)
    tree = _compile(tuple(ignore))
    ops: list[JsonDict] = []
    _compare(_strip(before, tree), _strip(after, tree), "", ops)
    if not ops:
        return None
    changed = tuple(sorted(op["path"] for op in ops))
    status_before, status_after = _status(before), _status(after)
    status_moved = "/status" in changed
    reason = _missed_reason(before, after, status_before, status_after, status_moved)
    return JobChange(
        kind=ChangeKind.STATUS_CHANGED if status_moved else ChangeKind.UPDATED,
        changed=changed,
        patch=tuple(ops),
        status_before=status_before,
        status_after=status_after,
        before=before,
        after=after,
        possibly_missed=reason is not None,
        missed_reason=reason,
    )


def without_ignored(snapshot: JsonDict, ignore: Collection[str] = DEFAULT_IGNORE) -> JsonDict:
    """``snapshot`` minus the ignored fields (names or JSON Pointers); the input is untouched."""
    return _strip(snapshot, _compile(tuple(ignore)))


def _whole(kind: ChangeKind, before: JsonDict | None, after: JsonDict | None) -> JobChange:
    return JobChange(
        kind=kind,
        changed=(),
        patch=(),
        status_before=None if before is None else _status(before),
        status_after=None if after is None else _status(after),
        before=before,
        after=after,
    )


def _status(snapshot: JsonDict) -> str | None:
    status = snapshot.get("status")
    return status if isinstance(status, str) else None


def _restarts(snapshot: JsonDict) -> int | None:
    value = snapshot.get("restart_times")
    return value if type(value) is int else None


def _missed_reason(
    before: JsonDict,
    after: JsonDict,
    status_before: str | None,
    status_after: str | None,
    status_moved: bool,
) -> str | None:
    """Why polling may have missed a state between the two snapshots, if it may have."""
    if (
        status_moved
        and status_before is not None
        and status_after is not None
        and not lifecycle.is_legal(status_before, status_after)
    ):
        return "illegal_transition"
    old, new = _restarts(before), _restarts(after)
    if old is None or new is None or new <= old:
        return None
    if new - old > 1:
        return "restarts_skipped"
    # one restart while the status reads the same: the job went down and up between polls
    return None if status_moved else "restart_between_polls"


@functools.lru_cache(maxsize=64)
def _compile(ignore: tuple[str, ...]) -> _Tree:
    tree: _Tree = {}
    for entry in ignore:
        parts = [_unescape(p) for p in entry[1:].split("/")] if entry.startswith("/") else [entry]
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an ancestor is already dropped whole
                break
            node = child
        else:
            node[parts[-1]] = None
    return tree


def _strip(doc: JsonDict, tree: _Tree) -> JsonDict:
    if not tree.keys() & doc.keys():
        return doc
    out = dict(doc)
    for key, sub in tree.items():
        if key not in out:
            continue
        if sub is None:
            del out[key]
        elif isinstance(out[key], dict):
            out[key] = _strip(out[key], sub)
    return out


def _compare(before: JsonDict, after: JsonDict, path: str, ops: list[JsonDict]) -> None:
    """Append the ops turning ``before`` into ``after``, in key order (deterministic)."""
    for key in sorted(before.keys() | after.keys()):
        at = f"{path}/{_escape(key)}"
        if key not in after:
            ops.append({"op": "remove", "path": at})
        elif key not in before:
            ops.append({"op": "add", "path": at, "value": after[key]})
        else:
            old, new = before[key], after[key]
            if type(old) is dict and type(new) is dict:
                _compare(old, new, at, ops)
            elif not _same(old, new):
                ops.append({"op": "replace", "path": at, "value": new})


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike ``==``, ``1``, ``1.0`` and ``true`` are three different values."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")
