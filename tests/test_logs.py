"""Logging set-up: JSON lines carry extras and exceptions; plain text on a terminal."""

import io
import logging
import sys

import orjson
import pytest

from bridge import logs
from bridge.errors import ConfigError


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "bridge.x", "levelname": "INFO", "msg": msg})
    rec.args = args
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_writes_message_level_logger_and_extras():
    line = logs.JsonFormatter().format(record("polled %s", "p1", project_id="p1", jobs=3))
    entry = orjson.loads(line)
    assert entry["message"] == "polled p1"
    assert entry["level"] == "info"
    assert entry["logger"] == "bridge.x"
    assert entry["project_id"] == "p1"
    assert entry["jobs"] == 3
    assert entry["time"].endswith("+00:00")


def test_json_formatter_includes_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR"})
        rec.exc_info = sys.exc_info()
    entry = orjson.loads(logs.JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]


def test_json_formatter_stringifies_values_orjson_cannot_encode():
    entry = orjson.loads(logs.JsonFormatter().format(record("x", thing=object())))
    assert entry["thing"].startswith("<object object")


@pytest.mark.parametrize(
    ("fmt", "is_tty", "json_expected"),
    [("auto", False, True), ("auto", True, False), ("json", True, True), ("plain", False, False)],
)
def test_configure_picks_json_or_plain(fmt, is_tty, json_expected, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("debug", fmt, is_tty=is_tty)
    logging.getLogger("bridge.test").debug("hello %d", 42)
    out = stream.getvalue().strip()
    assert "hello 42" in out
    assert out.startswith("{") is json_expected
    if json_expected:
        assert orjson.loads(out)["level"] == "debug"


@pytest.mark.parametrize("level", ["BOGUS", "", "verbose"])
def test_configure_refuses_an_unknown_level_naming_the_choices(level):
    with pytest.raises(ConfigError, match=r"log level .* is unknown: use one of DEBUG, INFO"):
        logs.configure(level)


def test_configure_accepts_every_level_in_any_case():
    for level in (*logs.LEVELS, "debug", "Warning"):
        logs.configure(level, "plain")


def test_aiokafka_bootstrap_failure_is_left_to_the_error_the_bridge_raises(monkeypatch):
    """The bridge's own error names the servers and the cause; aiokafka's line would repeat it."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("INFO", "plain")
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.error('Unable connect to "%s:%s": %s', "127.0.0.1", 1, "refused")
    aiokafka.error("Unable connect to node with id %s: %s", 1, "refused")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "node with id 1" in lines[0]


def test_fetch_offsets_errors_aiokafka_retries_are_dropped_and_others_kept(monkeypatch):
    """A partition leader not yet answering on a new topic is retried by aiokafka itself."""
    from aiokafka.errors import NotLeaderForPartitionError, UnsupportedVersionError

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("INFO", "plain")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    fetcher.error("Failed fetch offsets from %s: %s", 1, NotLeaderForPartitionError())
    fetcher.error("Failed fetch offsets from %s: %s", 1, UnsupportedVersionError())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "UnsupportedVersionError" in lines[0]


async def test_unretrieved_aiokafka_future_is_one_info_line_not_a_traceback(caplog):
    """A fenced producer leaves failed internal futures nobody awaits (aiokafka's drain
    waiters); asyncio would log them with a traceback at ERROR."""
    import asyncio
    import gc

    from aiokafka.errors import ProducerFenced

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    logs.quiet_kafka_futures(loop)
    try:
        with caplog.at_level(logging.INFO):
            future = loop.create_future()
            future.set_exception(ProducerFenced())
            del future
            gc.collect()
            other = loop.create_future()
            other.set_exception(ValueError("ours"))
            del other
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    kafka = [r for r in caplog.records if "ProducerFenced" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in kafka] == [(logging.INFO, None)]
    assert any(
        r.levelno == logging.ERROR and "never retrieved" in r.getMessage() for r in caplog.records
    )
