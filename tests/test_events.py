"""events: CloudEvents records in both Kafka content modes, read back by the official SDK."""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bridge.diff import ChangeKind, JobChange, diff
from bridge.events import (
    EventOptions,
    OutRecord,
    build_event,
    dead_letter,
    event_id,
    format_time,
    job_key,
    parse_state,
    state_record,
    state_tombstone,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
T0 = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)


def _validator(name: str) -> Draft202012Validator:
    schema = orjson.loads((SCHEMAS / name / "v1.json").read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


EVENT = _validator("job-event")
STATE = _validator("job-state")
DEAD = _validator("dead-letter")


def _job(**fields: Any) -> dict[str, Any]:
    job = {"job_id": 104, "name": "orders", "status": "job_running", "restart_times": 0}
    job.update(fields)
    return job


def _change(before=None, after=None, **kw) -> JobChange:
    change = diff(_job() if before is None else before, after or _job(status="job_canceling"), **kw)
    assert change is not None
    return change


def _build(change: JobChange | None = None, *, sequence=42, previous=T0, **opts) -> OutRecord:
    return build_event(
        change or _change(),
        project_id="p-1",
        job_id=104,
        job_name="orders",
        sequence=sequence,
        observed_at=T1,
        previous_observed_at=previous,
        options=EventOptions(region="cn-north-4", **opts),
    )


def _headers(record: OutRecord) -> dict[str, bytes]:
    names = [name for name, _ in record.headers]
    assert len(names) == len(set(names))
    return dict(record.headers)


def _structured_of(record: OutRecord) -> dict[str, Any]:
    """The structured-mode event equal to ``record``, whichever mode it was written in."""
    headers = _headers(record)
    assert record.value is not None
    if headers["content-type"] == b"application/cloudevents+json":
        event: dict[str, Any] = orjson.loads(record.value)
        return event
    attrs = {k[3:]: v.decode() for k, v in headers.items() if k.startswith("ce_")}
    return {**attrs, "datacontenttype": "application/json", "data": orjson.loads(record.value)}


def _validate_event(record: OutRecord) -> dict[str, Any]:
    event = _structured_of(record)
    EVENT.validate(event)
    return event


def _sdk_read(record: OutRecord, mode: str):
    assert record.value is not None
    message = ce_kafka.KafkaMessage(
        headers=dict(record.headers), key=record.key, value=record.value
    )
    reader = ce_kafka.from_structured_event if mode == "structured" else ce_kafka.from_binary_event
    auto = ce_kafka.from_kafka_event(message)
    read = reader(message)
    assert auto.get_attributes() == read.get_attributes()
    return read


# --- keys, ids, time -----------------------------------------------------------------------


def test_key_is_project_slash_job():
    assert job_key("p-1", 104) == b"p-1/104"


def test_event_id_is_a_stable_hash_of_project_job_sequence():
    expected = hashlib.blake2b(b"p-1/104/42", digest_size=16).hexdigest()
    assert event_id("p-1", 104, 42) == expected
    assert event_id("p-1", 104, 43) != expected
    assert event_id("p-1", 1042, 4) != event_id("p-1", 104, 24)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (T0, "2025-03-01T12:00:00.250000Z"),
        (datetime(2025, 3, 1, 12, 0), "2025-03-01T12:00:00.000000Z"),  # naive = UTC
        (
            datetime(2025, 3, 1, 20, 0, tzinfo=timezone(timedelta(hours=8))),
            "2025-03-01T12:00:00.000000Z",
        ),
    ],
)
def test_time_is_rfc3339_utc(moment, text):
    assert format_time(moment) == text


# --- the event -----------------------------------------------------------------------------


def test_structured_event_has_design_attributes_and_data():
    record = _build()
    headers = _headers(record)
    assert record.key == b"p-1/104"
    assert headers == {
        "content-type": b"application/cloudevents+json",
        "schema_version": b"1",
        "event_type": b"dli.job.status_changed",
    }
    event = _validate_event(record)
    assert {k: v for k, v in event.items() if k != "data"} == {
        "specversion": "1.0",
        "id": event_id("p-1", 104, 42),
        "source": "dli://cn-north-4/projects/p-1",
        "type": "dli.job.status_changed",
        "subject": "104",
        "time": "2025-03-01T12:00:30.250000Z",
        "datacontenttype": "application/json",
        "dataschema": "https://dli-bridge.invalid/schemas/job-event/v1.json",
        "sequence": "00000000000000000042",
        "partitionkey": "p-1/104",
    }
    assert event["data"] == {
        "project_id": "p-1",
        "job_id": 104,
        "job_name": "orders",
        "kind": "status_changed",
        "sequence": 42,
        "status_before": "job_running",
        "status_after": "job_canceling",
        "changed": ["/status"],
        "patch": [{"op": "replace", "path": "/status", "value": "job_canceling"}],
        "before": _job(),
        "after": _job(status="job_canceling"),
        "observed_at": "2025-03-01T12:00:30.250000Z",
        "previous_observed_at": "2025-03-01T12:00:00.250000Z",
        "possibly_missed": False,
        "missed_reason": None,
        "truncated": False,
    }


def test_binary_event_carries_attributes_in_ce_headers_and_data_as_value():
    structured, binary = _build(), _build(mode="binary")
    headers = _headers(binary)
    assert headers["content-type"] == b"application/json"
    assert headers["ce_sequence"] == b"00000000000000000042"
    assert (headers["schema_version"], headers["event_type"]) == (b"1", b"dli.job.status_changed")
    assert binary.key == structured.key
    assert _validate_event(binary) == _validate_event(structured)


def test_extension_attribute_names_obey_the_spec():
    for name, _ in _build(mode="binary").headers:
        if name.startswith("ce_"):
            assert name[3:].isalnum()
            assert name[3:].islower()


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_official_sdk_reads_the_same_attributes_and_data(mode):
    record = _build(mode=mode)
    expected = _structured_of(record)
    read = _sdk_read(record, mode)
    attributes = read.get_attributes()
    assert attributes.pop("time") == datetime.fromisoformat(expected.pop("time"))
    data = expected.pop("data")
    assert attributes == expected
    assert read.get_data() == data


@pytest.mark.parametrize(
    ("change", "kind", "missed"),
    [
        (diff(None, _job(), first_sweep=True), "discovered", None),
        (diff(None, _job()), "created", None),
        (diff(_job(), None), "deleted", None),
        (diff(_job(), _job(name="new")), "updated", None),
        (diff(_job(), _job(status="job_submitting")), "status_changed", "illegal_transition"),
        (diff(_job(), _job(restart_times=1)), "updated", "restart_between_polls"),
    ],
)
@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_every_kind_validates_and_round_trips(change, kind, missed, mode):
    record = _build(change, mode=mode, previous=None)
    event = _validate_event(record)
    assert event["type"] == f"dli.job.{kind}"
    assert event["data"]["kind"] == kind
    assert event["data"]["missed_reason"] == missed
    assert event["data"]["previous_observed_at"] is None
    assert _sdk_read(record, mode).get_data() == event["data"]


def test_snapshot_kind_is_reserved_but_valid():
    change = JobChange(ChangeKind.SNAPSHOT, (), (), "job_running", "job_running", None, _job())
    assert _validate_event(_build(change))["type"] == "dli.job.snapshot"


@pytest.mark.parametrize(
    ("snapshots", "before", "after"),
    [("both", True, True), ("after", False, True), ("none", False, False)],
)
def test_snapshots_option_chooses_what_rides_along(snapshots, before, after):
    data = _validate_event(_build(snapshots=snapshots))["data"]
    assert (data["before"] is not None, data["after"] is not None) == (before, after)
    assert data["patch"]
    assert data["truncated"] is False


# --- size ----------------------------------------------------------------------------------

BIG = "x" * 5000


def _big_change() -> JobChange:
    return _change(_job(sql_body=BIG), _job(sql_body=BIG, status="job_canceling"))


def _size(record: OutRecord) -> int:
    assert record.value is not None
    return len(record.key) + len(record.value) + sum(len(n) + len(v) for n, v in record.headers)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_oversized_event_drops_before_then_after(mode):
    full = _build(_big_change(), mode=mode)
    limit_one = _size(full) - 1000  # room for one snapshot, not two
    one = _build(_big_change(), mode=mode, max_record_bytes=limit_one)
    data = _validate_event(one)["data"]
    assert (data["before"], data["after"]["sql_body"], data["truncated"]) == (None, BIG, True)
    assert _size(one) <= limit_one
    none = _build(_big_change(), mode=mode, max_record_bytes=limit_one - 5000)
    data = _validate_event(none)["data"]
    assert (data["before"], data["after"], data["truncated"]) == (None, None, True)
    assert data["patch"] == [{"op": "replace", "path": "/status", "value": "job_canceling"}]


def test_event_at_the_limit_is_kept_whole():
    full = _build(_big_change())
    same = _build(_big_change(), max_record_bytes=_size(full))
    assert same == full


def test_event_too_big_without_snapshots_is_sent_with_a_warning(caplog):
    change = _change(_job(), _job(sql_body=BIG))  # the patch itself is big
    with caplog.at_level(logging.WARNING, logger="bridge.events"):
        record = _build(change, max_record_bytes=100)
    data = _validate_event(record)["data"]
    assert data["truncated"] is True
    assert data["patch"][0]["value"] == BIG
    assert "even without snapshots" in caplog.text


def test_nothing_to_drop_is_not_truncated(caplog):
    change = _change(_job(), _job(sql_body=BIG))
    with caplog.at_level(logging.WARNING, logger="bridge.events"):
        record = _build(change, snapshots="none", max_record_bytes=100)
    assert _validate_event(record)["data"]["truncated"] is False


@settings(max_examples=100, deadline=None)
@given(
    limit=st.integers(1, 30_000),
    mode=st.sampled_from(["structured", "binary"]),
    snapshots=st.sampled_from(["both", "after", "none"]),
)
def test_any_limit_gives_a_valid_event_fitting_unless_the_patch_is_too_big(limit, mode, snapshots):
    record = _build(_big_change(), mode=mode, snapshots=snapshots, max_record_bytes=limit)
    data = _validate_event(record)["data"]
    if data["before"] is not None or data["after"] is not None:
        assert _size(record) <= limit


# --- state records -------------------------------------------------------------------------


def test_state_record_round_trips_and_validates():
    snapshot = orjson.dumps(_job(job_config={"cu_number": 2}))
    record = state_record(
        project_id="p-1",
        job_id=104,
        sequence=7,
        snapshot=snapshot,
        fingerprint=b"\x01" * 16,
        row_fingerprint=b"\x02" * 16,
        observed_at=T1,
        generation=3,
    )
    assert record.key == b"p-1/104"
    assert _headers(record)["generation"] == b"3"
    assert record.value is not None
    STATE.validate(orjson.loads(record.value))
    value = parse_state(record.value)
    assert (value.project_id, value.job_id, value.sequence) == ("p-1", 104, 7)
    assert orjson.loads(value.snapshot) == orjson.loads(snapshot)
    assert (value.fingerprint, value.row_fingerprint, value.observed_at) == (
        b"\x01" * 16,
        b"\x02" * 16,
        T1,
    )


def test_state_record_without_row_fingerprint():
    record = state_record(
        project_id="p-1",
        job_id=1,
        sequence=0,
        snapshot=b'{"job_id":1}',
        fingerprint=b"\x00" * 16,
        row_fingerprint=None,
        observed_at=T0,
    )
    assert record.value is not None
    STATE.validate(orjson.loads(record.value))
    assert parse_state(record.value).row_fingerprint is None
    assert _headers(record)["generation"] == b"0"


def test_tombstone_has_no_value():
    record = state_tombstone("p-1", 104, generation=2)
    assert (record.key, record.value, _headers(record)["generation"]) == (b"p-1/104", None, b"2")


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"project_id":"p","job_id":1,"sequence":1,"snapshot":{},"fingerprint":"zz",'
        b'"row_fingerprint":null,"observed_at":"2025-01-01T00:00:00Z"}',
        b'{"project_id":"p","job_id":1,"sequence":1,"snapshot":{},"fingerprint":"00",'
        b'"row_fingerprint":null,"observed_at":"yesterday"}',
    ],
)
def test_unreadable_state_is_a_value_error(value):
    with pytest.raises(ValueError):  # noqa: PT011 - the sink catches exactly this
        parse_state(value)


# --- dead letters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text", "encoding"),
    [
        (b'{"is_success": tru', '{"is_success": tru', "utf-8"),
        (b"\xff\xfe\x00", base64.b64encode(b"\xff\xfe\x00").decode(), "base64"),
    ],
)
def test_dead_letter_keeps_the_body(body, text, encoding):
    record = dead_letter(
        project_id="p-1",
        job_id=104,
        body=body,
        error="job_detail.status: not a string",
        request_id="req-1",
        observed_at=T0,
    )
    assert record.value is not None
    value = orjson.loads(record.value)
    DEAD.validate(value)
    assert (record.key, value["body"], value["body_encoding"]) == (b"p-1/104", text, encoding)
    raw = value["body"].encode() if encoding == "utf-8" else base64.b64decode(value["body"])
    assert raw == body


def test_dead_letter_of_a_list_call_is_keyed_by_project():
    record = dead_letter(
        project_id="p-1", job_id=None, body=b"", error="e", request_id=None, observed_at=T0
    )
    assert record.key == b"p-1"
    assert record.value is not None
    DEAD.validate(orjson.loads(record.value))


def test_compact_json_is_orjson_output_in_a_right_sized_copy():
    doc = {"job_id": 104, "status": "job_running", "job_config": {"cu_number": 2}}
    from bridge.events import compact_json

    packed = compact_json(doc)
    assert type(packed) is bytes
    assert packed == orjson.dumps(doc)
