"""`dli-bridge tail`: decoding both modes, filters, the one-line format, and a real topic."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from jsonschema import Draft202012Validator

from bridge import tail
from bridge.diff import diff
from bridge.errors import ConfigError
from bridge.events import EventOptions, OutRecord, build_event
from bridge.models import JsonDict
from tests.kafka_fixtures import create_topic

PROJECT = "0123456789abcdef0123456789abcdef"
TIME = "2025-06-01T12:00:03.250000+00:00"


def event(kind: str = "status_changed", **data: Any) -> JsonDict:
    body = {
        "project_id": PROJECT,
        "job_id": 104,
        "job_name": "orders-etl",
        "kind": kind,
        "sequence": 7,
        "status_before": "job_running",
        "status_after": "job_running_exception",
        "changed": ["/status"],
        "possibly_missed": False,
        "missed_reason": None,
        "truncated": False,
        **data,
    }
    return {
        "specversion": "1.0",
        "id": "e-1",
        "source": f"/dli/sim-1/projects/{PROJECT}",
        "type": f"dli.job.{kind}",
        "subject": "104",
        "time": TIME,
        "datacontenttype": "application/json",
        "data": body,
    }


# --- decoding ------------------------------------------------------------------------------


def test_structured_record_is_the_event_itself():
    value = orjson.dumps(event())
    headers = [("content-type", b"application/cloudevents+json"), ("schema_version", b"1")]
    assert tail.cloudevent(value, headers) == event()


def test_binary_record_is_rebuilt_into_the_structured_form():
    ev = event()
    headers = [
        ("ce_" + k, str(v).encode()) for k, v in ev.items() if k not in ("data", "datacontenttype")
    ]
    headers += [("content-type", b"application/json"), ("schema_version", b"1")]
    assert tail.cloudevent(orjson.dumps(ev["data"]), headers) == ev


def test_tombstone_is_no_event():
    assert tail.cloudevent(None, []) is None


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]"])
def test_a_record_that_is_not_a_cloudevent_raises_value_error(value):
    with pytest.raises(ValueError):  # noqa: PT011 - orjson's error is a ValueError too
        tail.cloudevent(value, [])


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "accepted"),
    [
        (tail.Filters(), True),
        (tail.Filters(projects=(PROJECT,)), True),
        (tail.Filters(projects=(PROJECT[:8],)), True),  # the short id the line shows
        (tail.Filters(projects=("ffff",)), False),
        (tail.Filters(projects=("ffff", PROJECT[:4])), True),  # any of the values
        (tail.Filters(jobs=("104",)), True),
        (tail.Filters(jobs=("orders-etl",)), True),
        (tail.Filters(jobs=("orders",)), False),  # names match exactly
        (tail.Filters(types=("status_changed",)), True),
        (tail.Filters(types=("dli.job.status_changed",)), True),
        (tail.Filters(types=("updated", "deleted")), False),
        (tail.Filters(projects=(PROJECT,), jobs=("105",)), False),  # every filter must match
    ],
)
def test_filters(filters, accepted):
    assert filters.accepts(event()) is accepted


def test_an_unknown_type_is_refused_naming_the_kinds():
    with pytest.raises(ConfigError, match="--type 'status_change': choose from discovered, "):
        tail.Filters(types=("status_change",))


# --- the line --------------------------------------------------------------------------------

HEAD = "2025-06-01T12:00:03Z  01234567…  orders-etl #104  "


@pytest.mark.parametrize(
    ("data", "change"),
    [
        ({}, "job_running → job_running_exception"),
        (
            {"changed": ["/job_config/cu_number", "/status"]},
            "job_running → job_running_exception (+ /job_config/cu_number)",
        ),
        (
            {
                "kind": "updated",
                "status_before": "job_running",
                "status_after": "job_running",
                "changed": ["/job_config/cu_number", "/name"],
            },
            "updated /job_config/cu_number, /name",
        ),
        (
            {"kind": "updated", "changed": ["/a", "/b", "/c", "/d", "/e", "/f"]},
            "updated /a, /b, /c, /d +2 more",
        ),
        ({"kind": "updated", "changed": []}, "updated"),
        (
            {"kind": "created", "status_before": None, "status_after": "job_init"},
            "created (job_init)",
        ),
        (
            {"kind": "discovered", "status_before": None, "status_after": "job_running"},
            "discovered (job_running)",
        ),
        (
            {"kind": "deleted", "status_before": "job_finish", "status_after": None},
            "deleted (was job_finish)",
        ),
        ({"kind": "deleted", "status_before": None, "status_after": None}, "deleted"),
        ({"kind": "snapshot", "status_before": None, "status_after": None}, "snapshot"),
        (
            {
                "status_before": "job_submitting",
                "status_after": "job_finish",
                "possibly_missed": True,
                "missed_reason": "illegal_transition",
            },
            "job_submitting → job_finish  ⚠ possibly missed (illegal_transition)",
        ),
        (
            {"possibly_missed": True, "missed_reason": None},
            "job_running → job_running_exception  ⚠ possibly missed",
        ),
        (
            {"truncated": True},
            "job_running → job_running_exception  [snapshots dropped: too large]",
        ),
    ],
)
def test_line_without_colour(data, change):
    ev = event(**data)
    ev["type"] = f"dli.job.{ev['data']['kind']}"
    assert tail.format_event(ev) == HEAD + change


def test_line_falls_back_for_missing_fields():
    ev = {"time": "yesterday", "subject": "9", "data": {"kind": "created", "project_id": "p-1"}}
    assert tail.format_event(ev) == "yesterday  p-1  (unnamed) #9  created"


def test_time_without_zone_is_shown_as_given_in_utc_form():
    ev = event()
    ev["time"] = "2025-06-01T12:00:03"
    assert tail.format_event(ev).startswith("2025-06-01T12:00:03Z  ")


def test_time_in_another_zone_is_converted_to_utc():
    ev = event()
    ev["time"] = "2025-06-01T14:00:03+02:00"
    assert tail.format_event(ev).startswith("2025-06-01T12:00:03Z  ")


def test_colour_marks_failure_red_and_a_gap_yellow():
    ev = event(possibly_missed=True, missed_reason="restarts_skipped")
    line = tail.format_event(ev, color=True)
    assert "\x1b[31mjob_running_exception\x1b[0m" in line
    assert "\x1b[32mjob_running\x1b[0m" in line
    assert "\x1b[1;33m⚠ possibly missed (restarts_skipped)\x1b[0m" in line
    # the escapes are the only difference
    assert re.sub(r"\x1b\[[0-9;]*m", "", line) == tail.format_event(ev)


@pytest.mark.parametrize(
    ("status", "style"),
    [
        ("job_running", "green"),
        ("job_finish", "green"),
        ("job_submit_fail", "red"),
        ("job_arrearage_stopped", "red"),
        ("job_submitting", "yellow"),
        ("job_savepointing", "yellow"),
        ("job_init", None),
        ("something_new", None),
    ],
)
def test_status_styles(status, style):
    assert tail.status_style(status) == style


@pytest.mark.parametrize(
    ("choice", "is_tty", "environ", "expected"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: present *and* not empty
        ("always", False, {"NO_COLOR": "1"}, True),
        ("never", True, {}, False),
    ],
)
def test_use_color(choice, is_tty, environ, expected):
    assert tail.use_color(choice, is_tty=is_tty, environ=environ) is expected


def test_json_line_is_one_line_that_parses_back():
    line = tail.json_line(event())
    assert "\n" not in line
    assert orjson.loads(line) == event()


# --- --since ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("0.5h", 1800.0),
        (" 10M ", 600.0),
    ],
)
def test_parse_duration(text, seconds):
    assert tail.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m10", "-5m", "0", "0s", "1h 30m"])
def test_parse_duration_rejects_nonsense_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--since"):
        tail.parse_duration(text)


# --- a real topic, both modes, read back by `dli-bridge tail --json` ------------------------------

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = {"job_id": 104, "name": "orders-etl", "status": "job_running", "restart_times": 0}


def real_events() -> list[tuple[str, OutRecord]]:
    """Records the bridge itself would write: a discovery and a failure, in each mode."""
    failed = {**SNAPSHOT, "status": "job_running_exception"}
    changes = [diff(None, SNAPSHOT, first_sweep=True), diff(SNAPSHOT, failed)]
    records = []
    for mode in ("structured", "binary"):
        options = EventOptions(region="sim-1", mode=mode)
        for sequence, change in enumerate(changes, start=1):
            assert change is not None
            records.append(
                (
                    mode,
                    build_event(
                        change,
                        project_id=PROJECT,
                        job_id=104,
                        job_name="orders-etl",
                        sequence=sequence,
                        observed_at=datetime(2025, 6, 1, 12, 0, sequence, tzinfo=UTC),
                        previous_observed_at=None,
                        options=options,
                    ),
                )
            )
    return records


async def produce(bootstrap: str, topic: str, records: list[OutRecord]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()


async def read_lines(stream: asyncio.StreamReader, count: int, timeout_s: float) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(timeout_s):
        while len(lines) < count:
            line = await stream.readline()
            if not line:
                break
            lines.append(line.decode())
    return lines


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_tail_json_prints_structured_events_that_validate_in_both_modes(
    kafka_bootstrap, topic_name
):
    await create_topic(kafka_bootstrap, topic_name, partitions=3)
    written = real_events()
    await produce(kafka_bootstrap, topic_name, [record for _, record in written])
    argv = ["tail", "--bootstrap-servers", kafka_bootstrap, "--topic", topic_name]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *argv,
        "--from-beginning",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = await read_lines(proc.stdout, len(written), timeout_s=60)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    schema = orjson.loads((ROOT / "schemas" / "job-event" / "v1.json").read_bytes())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    events = [orjson.loads(line) for line in lines]
    for event in events:
        validator.validate(event)
    # one key, one partition: the order is the write order, and the two modes read the same
    structured = [orjson.loads(r.value or b"") for mode, r in written if mode == "structured"]
    assert events == structured + structured


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_tail_filters_and_formats_real_records(kafka_bootstrap, topic_name):
    await create_topic(kafka_bootstrap, topic_name)
    await produce(kafka_bootstrap, topic_name, [record for _, record in real_events()])
    argv = ["tail", "--bootstrap-servers", kafka_bootstrap, "--topic", topic_name]
    argv += ["--since", "1h", "--type", "status_changed", "--project", PROJECT[:8]]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": ""},
    )
    try:
        assert proc.stdout is not None
        lines = await read_lines(proc.stdout, 2, timeout_s=60)
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.communicate()
    expected = "orders-etl #104  job_running → job_running_exception\n"
    assert [line.split("  ", 2)[2] for line in lines] == [expected, expected]
    assert "\x1b[" not in "".join(lines)  # piped: no colour
