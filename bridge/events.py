"""What we publish, pure: CloudEvents 1.0 Kafka records for job changes, state and dead letters.

The Kafka protocol binding of CloudEvents decides the layout. Structured mode: the value is the
whole event as JSON, ``content-type: application/cloudevents+json``, and no ``ce_*`` header
(readers such as the official SDK switch to binary parsing when they see one). Binary mode:
attributes in ``ce_*`` headers, the value is ``data``. Both modes also carry ``schema_version``
and ``event_type`` headers so consumers can route without parsing. Values are built as plain
dicts and serialised with orjson: pydantic (``schemas.py``) only describes them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

import orjson

from bridge.diff import JobChange
from bridge.models import JsonDict
from bridge.schemas import schema_uri

__all__ = [
    "EventOptions",
    "OutRecord",
    "StateValue",
    "build_event",
    "compact_json",
    "dead_letter",
    "event_id",
    "format_time",
    "job_key",
    "parse_state",
    "state_record",
    "state_tombstone",
    "watermark",
]

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, bytes], ...]

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = b"application/cloudevents+json"
JSON_CONTENT_TYPE = b"application/json"
_SEQUENCE_DIGITS = 20  # a 64-bit counter fits; zero-padded so strings order like numbers


def compact_json(doc: object) -> bytes:
    """``doc`` as compact JSON bytes sized to their content, for values kept in memory.

    orjson (3.13) returns bytes whose allocation is several times their length: kept by
    the hundred thousand (one snapshot per tracked job) that was ~8 KB per 2 KB snapshot
    of resident memory. The copy costs about a microsecond and happens only on a change.
    """
    return bytes(memoryview(orjson.dumps(doc)))


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kafka record, topic-agnostic; the sink chooses topic and partition."""

    key: bytes
    value: bytes | None  # None = tombstone
    headers: Headers


@dataclass(frozen=True, slots=True)
class EventOptions:
    """How events are written: region for ``source``, content mode, which snapshots ride along."""

    region: str
    mode: Literal["structured", "binary"] = "structured"
    snapshots: Literal["both", "after", "none"] = "both"
    max_record_bytes: int = 1_000_000
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class StateValue:
    """A state record's value read back (the inverse of :func:`state_record`)."""

    project_id: str
    job_id: int
    sequence: int
    snapshot: bytes  # compact JSON of the job snapshot
    fingerprint: bytes
    row_fingerprint: bytes | None
    observed_at: datetime
    answered: tuple[str, ...] = ()  # re-snapshot request ids already answered


def job_key(project_id: str, job_id: int) -> bytes:
    """The Kafka key of every record about one job: per-job ordering, per-job compaction."""
    return f"{project_id}/{job_id}".encode()


def event_id(project_id: str, job_id: int, sequence: int) -> str:
    """Deterministic event id: a retried commit republishes the same id."""
    seed = f"{project_id}/{job_id}/{sequence}".encode()
    return hashlib.blake2b(seed, digest_size=16).hexdigest()


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``; a naive datetime is taken as UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=1024)
def _source(region: str, project_id: str) -> str:
    return f"dli://{quote(region, safe='')}/projects/{quote(project_id, safe='')}"


@functools.lru_cache(maxsize=16)
def _dataschema(version: int) -> str:
    return schema_uri("job-event", version)


def build_event(
    change: JobChange,
    *,
    project_id: str,
    job_id: int,
    job_name: str | None,
    sequence: int,
    observed_at: datetime,
    previous_observed_at: datetime | None,
    options: EventOptions,
    before_json: bytes | None = None,
    after_json: bytes | None = None,
) -> OutRecord:
    """The record announcing ``change``; never fails on size (snapshots are dropped instead).

    ``before_json``/``after_json``: the snapshots as compact JSON, used instead of
    ``change.before``/``change.after`` (the engine keeps bytes, not parsed documents, while a
    cycle waits for its commit).
    """
    kind = change.kind.value
    event_type = f"dli.job.{kind}"
    key = job_key(project_id, job_id)
    time = format_time(observed_at)
    data: JsonDict = {
        "project_id": project_id,
        "job_id": job_id,
        "job_name": job_name,
        "kind": kind,
        "sequence": sequence,
        "status_before": change.status_before,
        "status_after": change.status_after,
        "changed": change.changed,
        "patch": change.patch,
        "before": _doc(change.before, before_json) if options.snapshots == "both" else None,
        "after": _doc(change.after, after_json) if options.snapshots != "none" else None,
        "observed_at": time,
        "previous_observed_at": None
        if previous_observed_at is None
        else format_time(previous_observed_at),
        "possibly_missed": change.possibly_missed,
        "missed_reason": change.missed_reason,
        "truncated": False,
    }
    attributes = {
        "specversion": SPECVERSION,
        "id": event_id(project_id, job_id, sequence),
        "source": _source(options.region, project_id),
        "type": event_type,
        "subject": str(job_id),
        "time": time,
        "dataschema": _dataschema(options.schema_version),
        "sequence": f"{sequence:0{_SEQUENCE_DIGITS}d}",
        "partitionkey": key.decode(),
    }
    routing = (
        ("schema_version", str(options.schema_version).encode()),
        ("event_type", event_type.encode()),
    )
    if options.mode == "binary":
        headers = (
            *((f"ce_{name}", value.encode()) for name, value in attributes.items()),
            ("content-type", JSON_CONTENT_TYPE),
            *routing,
        )
        return _fit(key, headers, data, lambda: orjson.dumps(data), options.max_record_bytes)
    envelope = {**attributes, "datacontenttype": "application/json", "data": data}
    headers = (("content-type", STRUCTURED_CONTENT_TYPE), *routing)
    return _fit(key, headers, data, lambda: orjson.dumps(envelope), options.max_record_bytes)


def _doc(doc: JsonDict | None, compact: bytes | None) -> JsonDict | orjson.Fragment | None:
    return doc if compact is None else orjson.Fragment(compact)


def _fit(
    key: bytes, headers: Headers, data: JsonDict, encode: Callable[[], bytes], limit: int
) -> OutRecord:
    """Encode; while the record is over ``limit``, drop ``before``, then ``after``."""
    fixed = len(key) + sum(len(name) + len(value) for name, value in headers)
    value = encode()
    for field in ("before", "after"):
        if fixed + len(value) <= limit:
            break
        if data[field] is not None:
            data[field] = None
            data["truncated"] = True
            value = encode()
    if fixed + len(value) > limit:
        # the patch always rides along; the sink may still refuse a record this large
        log.warning("event %s is %d bytes even without snapshots", key, fixed + len(value))
    return OutRecord(key=key, value=value, headers=headers)


def state_record(
    *,
    project_id: str,
    job_id: int,
    sequence: int,
    snapshot: bytes,
    fingerprint: bytes,
    row_fingerprint: bytes | None,
    observed_at: datetime,
    generation: int = 0,
    answered: tuple[str, ...] = (),
) -> OutRecord:
    """The compacted state topic's record of one job (``schemas/job-state/v2.json``).

    ``snapshot`` is the job's JSON as bytes and is embedded as is, without re-parsing.
    """
    value = {
        "project_id": project_id,
        "job_id": job_id,
        "sequence": sequence,
        "snapshot": orjson.Fragment(snapshot),
        "fingerprint": fingerprint.hex(),
        "row_fingerprint": None if row_fingerprint is None else row_fingerprint.hex(),
        "observed_at": format_time(observed_at),
        "answered": list(answered),
    }
    return OutRecord(
        key=job_key(project_id, job_id),
        value=orjson.dumps(value),
        headers=_state_headers(generation),
    )


def state_tombstone(project_id: str, job_id: int, generation: int = 0) -> OutRecord:
    """Deletes a job's state record once compaction runs."""
    return OutRecord(
        key=job_key(project_id, job_id), value=None, headers=_state_headers(generation)
    )


def _state_headers(generation: int) -> Headers:
    return (
        ("content-type", JSON_CONTENT_TYPE),
        ("schema_version", b"2"),
        ("generation", str(generation).encode()),
    )


def parse_state(value: bytes) -> StateValue:
    """Read a state record's value back; ValueError when it is not one."""
    try:
        doc = orjson.loads(value)
        row_fp = doc["row_fingerprint"]
        return StateValue(
            project_id=str(doc["project_id"]),
            job_id=int(doc["job_id"]),
            sequence=int(doc["sequence"]),
            snapshot=compact_json(doc["snapshot"]),
            fingerprint=bytes.fromhex(doc["fingerprint"]),
            row_fingerprint=None if row_fp is None else bytes.fromhex(row_fp),
            observed_at=datetime.fromisoformat(doc["observed_at"]),
            answered=tuple(str(a) for a in doc.get("answered", ())),
        )
    except (KeyError, TypeError) as exc:  # ValueError (JSON, hex, int, time) passes as is
        raise ValueError(f"not a state record: {exc!r}") from exc


def dead_letter(
    *,
    project_id: str,
    job_id: int | None,
    body: bytes,
    error: str,
    request_id: str | None,
    observed_at: datetime,
) -> OutRecord:
    """A DLI answer we could not use (``schemas/dead-letter/v1.json``); body kept verbatim."""
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    value = {
        "project_id": project_id,
        "job_id": job_id,
        "error": error,
        "request_id": request_id,
        "observed_at": format_time(observed_at),
        "body": text,
        "body_encoding": encoding,
    }
    key = project_id.encode() if job_id is None else job_key(project_id, job_id)
    headers = (("content-type", JSON_CONTENT_TYPE), ("schema_version", b"1"))
    return OutRecord(key=key, value=orjson.dumps(value), headers=headers)


def watermark(*, project_id: str, observed_through: datetime, jobs: int, mode: str) -> OutRecord:
    """The project's "observed through" record (``schemas/watermark/v1.json``)."""
    value = {
        "project_id": project_id,
        "observed_through": format_time(observed_through),
        "jobs": jobs,
        "mode": mode,
    }
    headers = (("content-type", JSON_CONTENT_TYPE), ("schema_version", b"1"))
    return OutRecord(key=project_id.encode(), value=orjson.dumps(value), headers=headers)
