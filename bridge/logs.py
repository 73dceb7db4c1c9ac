"""Logging set-up: JSON lines for machines, plain text for a terminal; one place builds it."""

from __future__ import annotations

import asyncio
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from bridge.errors import ConfigError

log = logging.getLogger(__name__)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

LogFormat = Literal["json", "plain", "auto"]

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _BootstrapNoise(logging.Filter):
    """Drops aiokafka's bootstrap ``Unable connect to "HOST:PORT"`` line: a client that
    cannot bootstrap raises, and the bridge reports that once, naming the servers and the
    cause. Lost connections to a known node (``... to node with id``) still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (record.name == "aiokafka" and msg.startswith('Unable connect to "'))


# aiokafka's fetcher logs these at ERROR and retries 100 ms later; on topics created moments
# ago a partition's leader is announced before it answers offset lookups. A lasting failure
# still surfaces: restore has a stall deadline, membership raises MembershipError.
_TRANSIENT_FETCH_ERRORS = (
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
    "UnknownTopicOrPartitionError",
)


class _RetriedNoise(logging.Filter):
    """Drops aiokafka's "Failed fetch offsets" line for errors it retries on its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiokafka.consumer.fetcher" or not str(record.msg).startswith(
            "Failed fetch offsets"
        ):
            return True
        error = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        return type(error).__name__ not in _TRANSIENT_FETCH_ERRORS


def quiet_kafka_futures(loop: asyncio.AbstractEventLoop) -> None:
    """Report aiokafka's unretrieved internal futures in one line, not as a traceback.

    When a transactional producer is fenced, aiokafka fails its batches' internal drain
    futures that nothing awaits, and asyncio logs "Future exception was never retrieved"
    with a traceback at ERROR. The bridge has already handled the fencing (the shard stops
    until a new assignment), so the line reads like a crash it is not. Everything else
    goes to the default handler.
    """

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is not None and type(exc).__module__.startswith("aiokafka"):
            log.info("aiokafka dropped an internal result after %r", exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def configure(level: str = "INFO", fmt: LogFormat = "auto", *, is_tty: bool = False) -> None:
    """Install the root handler on stderr; ``auto`` means plain on a terminal, JSON otherwise."""
    if level.upper() not in LEVELS:
        raise ConfigError(f"log level {level!r} is unknown: use one of {', '.join(LEVELS)}")
    use_json = fmt == "json" or (fmt == "auto" and not is_tty)
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if use_json
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "filters": {
                "bootstrap_noise": {"()": _BootstrapNoise},
                "retried_noise": {"()": _RetriedNoise},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "stream": "ext://sys.stderr",
                    "filters": ["bootstrap_noise", "retried_noise"],
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            # aiokafka logs every reconnect at WARNING/ERROR; keep its chatter one level down
            "loggers": {"aiokafka": {"level": "WARNING"}},
        }
    )
