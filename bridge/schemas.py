"""Wire formats as pydantic models, exported to versioned JSON Schema files; drift and compat.

The models describe what ``events.py`` writes; they are not on the hot path (events are built
as dicts and serialised with orjson). ``schemas/<name>/v<N>.json`` is generated from them and
committed; a released file is never edited, a breaking change is a new version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field

from bridge.models import JsonDict

__all__ = [
    "DRAFT_2020_12",
    "SCHEMAS",
    "DeadLetterV1",
    "EventKind",
    "JobEventDataV1",
    "JobEventV1",
    "JobStateV1",
    "JobStateV2",
    "MissedReason",
    "PatchOp",
    "Schema",
    "WatermarkV1",
    "check",
    "export",
    "is_backward_compatible",
    "render",
    "schema_uri",
]

log = logging.getLogger(__name__)

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Not resolvable on purpose (.invalid is reserved): an identifier whose path mirrors schemas/.
SCHEMA_BASE = "https://dli-bridge.invalid/schemas"


def schema_uri(name: str, version: int) -> str:
    """The ``$id`` of ``schemas/<name>/v<version>.json``, also the events' ``dataschema``."""
    return f"{SCHEMA_BASE}/{name}/v{version}.json"


# Spelled out, not taken from diff.ChangeKind: a released schema must not move with the code.
# tests/test_schemas.py holds the two together.
EventKind = Literal["discovered", "created", "status_changed", "updated", "deleted", "snapshot"]
MissedReason = Literal["illegal_transition", "restarts_skipped", "restart_between_polls"]
_KIND_PATTERN = "|".join(get_args(EventKind))
Hex128 = Annotated[str, Field(pattern="^[0-9a-f]{32}$")]
Timestamp = Annotated[datetime, Field(description="RFC 3339, UTC")]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True)


class PatchOp(_Wire):
    """One RFC 6902 operation; ``value`` is absent for ``remove``."""

    op: Literal["add", "remove", "replace"]
    path: Annotated[str, Field(json_schema_extra={"format": "json-pointer"})]
    value: Any = None


class JobEventDataV1(_Wire):
    """``data`` of a job change event: what changed, between which two observations."""

    project_id: str
    job_id: int
    job_name: str | None
    kind: EventKind
    sequence: Annotated[int, Field(ge=0, description="per job, monotonic")]
    status_before: str | None
    status_after: str | None
    changed: list[Annotated[str, Field(json_schema_extra={"format": "json-pointer"})]]
    patch: list[PatchOp]
    before: JsonDict | None
    after: JsonDict | None
    observed_at: Timestamp
    previous_observed_at: Timestamp | None
    possibly_missed: bool
    missed_reason: MissedReason | None
    truncated: bool = Field(description="before/after dropped to fit the record size limit")


class JobEventV1(_Wire):
    """A job change as a CloudEvents 1.0 event in structured mode (binary mode: ``data`` only)."""

    specversion: Literal["1.0"]
    id: Hex128
    source: Annotated[str, Field(json_schema_extra={"format": "uri-reference"})]
    type: Annotated[str, Field(pattern=f"^dli\\.job\\.({_KIND_PATTERN})$")]
    subject: Annotated[str, Field(pattern="^[0-9]+$")]
    time: Timestamp
    datacontenttype: Literal["application/json"]
    dataschema: Annotated[str, Field(json_schema_extra={"format": "uri"})]
    sequence: Annotated[str, Field(pattern="^[0-9]{20}$", description="sequence extension")]
    partitionkey: Annotated[str, Field(description="partitioning extension: the Kafka key")]
    data: JobEventDataV1


class JobStateV1(_Wire):
    """The latest committed snapshot of a job on the compacted state topic."""

    project_id: str
    job_id: int
    sequence: Annotated[int, Field(ge=0)]
    snapshot: JsonDict
    fingerprint: Hex128
    row_fingerprint: Hex128 | None
    observed_at: Timestamp


class JobStateV2(JobStateV1):
    """v1 plus the re-snapshot requests this job's snapshot already answered (issue 11)."""

    answered: list[str] = Field(
        default_factory=list, description="ids of re-snapshot requests answered, newest last"
    )


class DeadLetterV1(_Wire):
    """A DLI answer we could not use: the raw body, the error, and where it came from."""

    project_id: str
    job_id: int | None
    error: str
    request_id: str | None
    observed_at: Timestamp
    body: str = Field(description="the raw body: text when it is UTF-8, else base64")
    body_encoding: Literal["utf-8", "base64"]


class WatermarkV1(_Wire):
    """A project observed through a time: every change before it is already published.

    Written after a complete sweep of the project, in the same transaction as that cycle's
    events, so a ``read_committed`` reader that sees it has seen those events too.
    """

    project_id: str
    observed_through: Timestamp = Field(
        description="every change of the project before this time is already published"
    )
    jobs: Annotated[int, Field(ge=0, description="jobs tracked inside the filters")]
    mode: Literal["detail", "list", "sweep"]


@dataclass(frozen=True, slots=True)
class Schema:
    """One released schema file: its name, version, model and title."""

    name: str
    version: int
    model: type[BaseModel]
    title: str

    @property
    def relpath(self) -> Path:
        return Path(self.name) / f"v{self.version}.json"


SCHEMAS: tuple[Schema, ...] = (
    Schema("job-event", 1, JobEventV1, "DLI job change event (CloudEvents 1.0)"),
    Schema("job-state", 1, JobStateV1, "DLI job state record"),
    Schema("job-state", 2, JobStateV2, "DLI job state record"),
    Schema("dead-letter", 1, DeadLetterV1, "DLI dead letter"),
    Schema("watermark", 1, WatermarkV1, "DLI project watermark"),
)


def render(schema: Schema) -> bytes:
    """The exact bytes of a schema file."""
    body = schema.model.model_json_schema()
    body.pop("title", None)
    doc = {"$schema": DRAFT_2020_12, "$id": schema_uri(schema.name, schema.version)}
    doc["title"] = schema.title
    doc.update(body)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def export(root: Path) -> list[Path]:
    """Write every schema file under ``root``; return the paths written."""
    written = []
    for schema in SCHEMAS:
        path = root / schema.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(schema))
        written.append(path)
    log.info("wrote %d schema files under %s", len(written), root)
    return written


def check(root: Path) -> list[str]:
    """Problems, one per file that is missing or differs from what the models produce."""
    problems = []
    for schema in SCHEMAS:
        path = root / schema.relpath
        if not path.is_file():
            problems.append(f"{path}: missing (run `dli-bridge schemas export`)")
        elif path.read_bytes() != render(schema):
            problems.append(f"{path}: differs from {schema.model.__name__} (a model drifted)")
    return problems


# --- backward compatibility: does new accept every document old accepts? -------------------

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT = ("pattern", "format", "const", "multipleOf")


def is_backward_compatible(old: JsonDict, new: JsonDict) -> list[str]:
    """Why ``new`` may reject a document ``old`` accepts; empty when it accepts them all.

    Structural, not a full decision procedure: it reports removed properties, narrowed types,
    new required properties, removed enum values and tightened constraints, walking local
    ``$ref``s, ``properties``, ``items`` and ``anyOf``/``oneOf`` branches.
    """
    return list(_walk(old, new, old, new, "", set()))


def _walk(
    old: JsonDict, new: JsonDict, old_root: JsonDict, new_root: JsonDict, at: str, seen: set[str]
) -> Iterator[str]:
    old, new = _deref(old, old_root), _deref(new, new_root)
    if (marker := f"{id(old)}|{id(new)}") in seen:  # each pair once: recursive $refs end
        return
    seen.add(marker)
    where = at or "/"
    yield from _types(_type_set(old, old_root), _type_set(new, new_root), where)
    if _alternatives(old) or _alternatives(new):
        for old_branch, new_branch in _branches(old, new, old_root, new_root):
            yield from _walk(old_branch, new_branch, old_root, new_root, at, seen)
        return
    yield from _enum(old, new, where)
    yield from _constraints(old, new, where)
    yield from _required(old, new, where)
    for name, old_sub, new_sub in _properties(old, new):
        if new_sub is None:
            yield f"{at}/{name}: property removed"
        else:
            yield from _walk(old_sub, new_sub, old_root, new_root, f"{at}/{name}", seen)
    if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
        yield from _walk(old["items"], new["items"], old_root, new_root, f"{at}/items", seen)


def _deref(node: JsonDict, root: JsonDict) -> JsonDict:
    while isinstance(ref := node.get("$ref"), str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _alternatives(node: JsonDict) -> list[JsonDict] | None:
    branches = node.get("anyOf") or node.get("oneOf")
    return branches if isinstance(branches, list) and branches else None


def _type_set(node: JsonDict, root: JsonDict) -> set[str] | None:
    """The JSON types a node allows; None when it does not restrict them."""
    node = _deref(node, root)
    if "type" in node:
        kind = node["type"]
        return {kind} if isinstance(kind, str) else set(kind)
    branches = _alternatives(node)
    if branches is None:
        return None
    types: set[str] = set()
    for branch in branches:
        branch_types = _type_set(branch, root)
        if branch_types is None:
            return None
        types |= branch_types
    return types


def _types(old_types: set[str] | None, new_types: set[str] | None, where: str) -> Iterator[str]:
    if new_types is None:
        return
    if old_types is None:
        yield f"{where}: type narrowed from any to {sorted(new_types)}"
        return
    if "number" in new_types:
        new_types = new_types | {"integer"}
    if lost := old_types - new_types:
        yield f"{where}: type narrowed, {sorted(lost)} no longer accepted"


def _enum(old: JsonDict, new: JsonDict, where: str) -> Iterator[str]:
    if "enum" not in new:
        return
    if "enum" not in old:
        yield f"{where}: enum added"
        return
    removed = [v for v in old["enum"] if v not in new["enum"]]
    if removed:
        yield f"{where}: enum values removed: {removed}"


def _constraints(old: JsonDict, new: JsonDict, where: str) -> Iterator[str]:
    for word in _LOWER_BOUNDS:
        if word in new and (word not in old or new[word] > old[word]):
            yield f"{where}: {word} tightened to {new[word]}"
    for word in _UPPER_BOUNDS:
        if word in new and (word not in old or new[word] < old[word]):
            yield f"{where}: {word} tightened to {new[word]}"
    for word in _EXACT:
        if word in new and new[word] != old.get(word):
            yield f"{where}: {word} changed to {new[word]!r}"
    if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
        yield f"{where}: additional properties no longer allowed"


def _required(old: JsonDict, new: JsonDict, where: str) -> Iterator[str]:
    added = sorted(set(new.get("required", ())) - set(old.get("required", ())))
    if added:
        yield f"{where}: new required properties {added}"


def _properties(old: JsonDict, new: JsonDict) -> Iterator[tuple[str, JsonDict, JsonDict | None]]:
    new_props = new.get("properties", {})
    for name, sub in old.get("properties", {}).items():
        yield name, sub, new_props.get(name)


def _branches(
    old: JsonDict, new: JsonDict, old_root: JsonDict, new_root: JsonDict
) -> Iterator[tuple[JsonDict, JsonDict]]:
    """Pairs of anyOf/oneOf branches (or a bare node) that allow the same JSON types."""
    news = [_deref(b, new_root) for b in _alternatives(new) or [new]]
    for old_branch in (_deref(b, old_root) for b in _alternatives(old) or [old]):
        old_types = _type_set(old_branch, old_root)
        match = next((n for n in news if _type_set(n, new_root) == old_types), None)
        if match is not None:
            yield old_branch, match
