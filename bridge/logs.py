"""Logging set-up: JSON lines for machines, plain text for a terminal; one place builds it."""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from bridge.errors import ConfigError

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
            "filters": {"bootstrap_noise": {"()": _BootstrapNoise}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "stream": "ext://sys.stderr",
                    "filters": ["bootstrap_noise"],
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            # aiokafka logs every reconnect at WARNING/ERROR; keep its chatter one level down
            "loggers": {"aiokafka": {"level": "WARNING"}},
        }
    )
