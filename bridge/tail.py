"""`dli-bridge tail`: read the events topic as a read_committed consumer, one line per event.

The formatting is pure (``cloudevent``, ``Filters``, ``format_event``, ``parse_duration``);
``EventReader`` is the thin Kafka edge that yields decoded events.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bridge.diff import ChangeKind
from bridge.errors import ConfigError, SinkUnavailable
from bridge.lifecycle import TRANSITIONAL
from bridge.models import JsonDict

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "DEFAULT_TOPIC",
    "EventReader",
    "Filters",
    "Position",
    "cloudevent",
    "format_event",
    "json_line",
    "parse_duration",
    "use_color",
]

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_SERVERS: Final = "127.0.0.1:9092"
DEFAULT_TOPIC: Final = "dli.jobs.events"
TYPE_PREFIX: Final = "dli.job."
KINDS: Final = tuple(kind.value for kind in ChangeKind)
CONNECT_TIMEOUT_S: Final = 30.0
TOPIC_POLL_S: Final = 0.5

# Where to start reading: the end (only new events), the beginning, or epoch milliseconds.
Position = Literal["latest", "beginning"] | int

# --- decoding: a Kafka record -> the structured CloudEvent --------------------------------------

_CE_PREFIX: Final = "ce_"


def _header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    return {name.lower(): value.decode("utf-8", "replace") for name, value in headers}


def cloudevent(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> JsonDict | None:
    """The structured CloudEvent a record carries, whichever mode it was written in.

    Binary mode (Kafka protocol binding: attributes in ``ce_*`` headers, ``content-type``
    as ``datacontenttype``, value = data) is rebuilt into the structured form, so callers
    see one shape. ``None`` for a tombstone. Raises ValueError when the value is not JSON.
    """
    if value is None:
        return None
    parsed = orjson.loads(value)
    found = _header_map(headers)
    if f"{_CE_PREFIX}specversion" not in found:
        if not isinstance(parsed, dict):
            raise ValueError("a structured CloudEvent must be a JSON object")
        return parsed
    event: JsonDict = {
        name.removeprefix(_CE_PREFIX): text
        for name, text in found.items()
        if name.startswith(_CE_PREFIX)
    }
    if "content-type" in found:
        event["datacontenttype"] = found["content-type"]
    event["data"] = parsed
    return event


def json_line(event: JsonDict) -> str:
    """The event as one line of JSON (for ``--json`` and ``jq``)."""
    return orjson.dumps(event).decode()


# --- filtering -------------------------------------------------------------------------------


def event_type(kind: str) -> str:
    """``status_changed`` or ``dli.job.status_changed`` -> ``dli.job.status_changed``.

    Raises ConfigError for a kind no event has, so a typo is not a filter that never matches.
    """
    full = kind if kind.startswith(TYPE_PREFIX) else TYPE_PREFIX + kind
    if full.removeprefix(TYPE_PREFIX) not in KINDS:
        raise ConfigError(f"--type {kind!r}: choose from {', '.join(KINDS)}")
    return full


@dataclass(frozen=True, slots=True)
class Filters:
    """Which events to show: every given filter must match (each accepts any of its values).

    ``projects`` match project ids by prefix (the line shows a shortened id); ``jobs`` match
    the job id or the exact job name; ``types`` take ``status_changed`` or its full type.
    """

    projects: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(event_type(t) for t in self.types))

    def accepts(self, event: JsonDict) -> bool:
        data = _data(event)
        if self.types and event.get("type") not in self.types:
            return False
        project = str(data.get("project_id", ""))
        if self.projects and not any(project.startswith(p) for p in self.projects):
            return False
        names = {str(data.get("job_id", "")), str(data.get("job_name", ""))}
        return not self.jobs or bool(names & set(self.jobs))


def _data(event: JsonDict) -> JsonDict:
    data = event.get("data")
    return data if isinstance(data, dict) else {}


# --- one readable line -----------------------------------------------------------------------

_RESET: Final = "\x1b[0m"
_STYLES: Final = {
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
    "red": "\x1b[31m",
    "green": "\x1b[32m",
    "yellow": "\x1b[33m",
    "blue": "\x1b[34m",
    "magenta": "\x1b[35m",
    "cyan": "\x1b[36m",
    "warn": "\x1b[1;33m",
}
_BAD_STATUSES: Final = frozenset(
    {
        "job_submit_fail",
        "job_running_exception",
        "job_cancel_fail",
        "job_arrearage_stopped",
    }
)
_GOOD_STATUSES: Final = frozenset({"job_running", "job_finish", "job_cancel_success"})
_KIND_STYLES: Final = {
    "created": "green",
    "discovered": "green",
    "deleted": "red",
    "updated": "cyan",
    "snapshot": "dim",
}
_SHORT_ID: Final = 8  # project ids are 32 hex digits; 8 tell them apart, like a short git hash
_MAX_FIELDS: Final = 4
ARROW: Final = "→"
MISSED_MARK: Final = "⚠ possibly missed"


def use_color(choice: str, *, is_tty: bool, environ: Mapping[str, str]) -> bool:
    """``always``/``never``, or ``auto``: a terminal and no ``NO_COLOR`` (no-color.org)."""
    if choice != "auto":
        return choice == "always"
    return is_tty and not environ.get("NO_COLOR")


def _paint(text: str, style: str | None, color: bool) -> str:
    if not color or style is None:
        return text
    return f"{_STYLES[style]}{text}{_RESET}"


def status_style(status: str | None) -> str | None:
    """red for failures, green for healthy end states, yellow for transitional ones."""
    if status in _BAD_STATUSES:
        return "red"
    if status in _GOOD_STATUSES:
        return "green"
    if status in TRANSITIONAL:
        return "yellow"
    return None


def format_time(value: Any) -> str:
    """An RFC 3339 time as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC; anything else as it came."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def short_project(project_id: str) -> str:
    return project_id if len(project_id) <= _SHORT_ID + 1 else project_id[:_SHORT_ID] + "…"


def _fields(paths: Collection[str]) -> str:
    shown = ", ".join(list(paths)[:_MAX_FIELDS])
    more = len(paths) - _MAX_FIELDS
    return shown + (f" +{more} more" if more > 0 else "")


def _status(status: Any, color: bool) -> str:
    text = str(status) if status is not None else "?"
    return _paint(text, status_style(text), color)


def describe_change(data: JsonDict, *, color: bool = False) -> str:
    """``a → b``, ``updated /x, /y``, ``created (job_init)``, ``deleted (was job_running)``."""
    kind = str(data.get("kind", "?"))
    before, after = data.get("status_before"), data.get("status_after")
    changed = [str(p) for p in data.get("changed") or ()]
    if kind == "status_changed":
        text = f"{_status(before, color)} {ARROW} {_status(after, color)}"
        others = [p for p in changed if p != "/status"]
        return text + (f" (+ {_fields(others)})" if others else "")
    label = _paint(kind, _KIND_STYLES.get(kind), color)
    if kind == "updated":
        return f"{label} {_fields(changed)}" if changed else label
    if kind == "deleted":
        return f"{label} (was {_status(before, color)})" if before else label
    if after is not None:
        return f"{label} ({_status(after, color)})"
    return label


def _marks(data: JsonDict, color: bool) -> str:
    marks = []
    if data.get("possibly_missed"):
        reason = data.get("missed_reason")
        text = MISSED_MARK + (f" ({reason})" if reason else "")
        marks.append(_paint(text, "warn", color))
    if data.get("truncated"):
        marks.append(_paint("[snapshots dropped: too large]", "dim", color))
    return "".join(f"  {m}" for m in marks)


def format_event(event: JsonDict, *, color: bool = False) -> str:
    """One line: time, project, job name and id, the change, and any markers."""
    data = _data(event)
    moment = _paint(format_time(event.get("time", data.get("observed_at", "?"))), "dim", color)
    project = _paint(short_project(str(data.get("project_id", "?"))), "magenta", color)
    name = data.get("job_name") or "(unnamed)"
    job = f"{_paint(str(name), 'bold', color)} #{data.get('job_id', event.get('subject', '?'))}"
    return f"{moment}  {project}  {job}  {describe_change(data, color=color)}{_marks(data, color)}"


# --- --since ---------------------------------------------------------------------------------

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds -> seconds (positive)."""
    spec = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spec):
        seconds = float(spec)
    elif spec and re.fullmatch(f"(?:{_DURATION.pattern})+", spec):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(spec))
    else:
        raise ConfigError(f"--since {text!r}: expected a duration such as 90s, 10m, 2h or 1d")
    if seconds <= 0:
        raise ConfigError(f"--since {text!r}: the duration must be positive")
    return seconds


# --- the Kafka edge --------------------------------------------------------------------------


async def _partitions(bootstrap: str, topic: str, options: Mapping[str, Any]) -> list[int]:
    """The topic's partitions once it exists, asking for all topics (never auto-creating it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await admin.start()
        waiting_logged = False
        while True:
            # a metadata request naming the topic would create it on a broker with
            # auto.create.topics.enable; asking for every topic never does
            for described in await admin.describe_topics():
                if described["topic"] == topic and _led(described["partitions"]):
                    return sorted(p["partition"] for p in described["partitions"])
            if not waiting_logged:
                log.info("waiting for topic %s to exist and have leaders", topic)
                waiting_logged = True
            await asyncio.sleep(TOPIC_POLL_S)
    finally:
        await admin.close()


def _led(partitions: Sequence[Mapping[str, Any]]) -> bool:
    # a topic created a moment ago has partitions without a leader for a while
    return bool(partitions) and all(p["error_code"] == 0 and p["leader"] >= 0 for p in partitions)


class EventReader:
    """A read_committed consumer of every partition of the events topic, no consumer group.

    ``async with EventReader(...) as reader: async for event in reader`` yields structured
    CloudEvents (binary records rebuilt) that pass ``filters``; records that are not
    CloudEvents are logged and skipped.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = DEFAULT_TOPIC,
        *,
        filters: Filters | None = None,
        start: Position = "latest",
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.filters = filters or Filters()
        self.start = start
        self._options = dict(client_options or {})
        self._consumer: AIOKafkaConsumer | None = None

    def __repr__(self) -> str:
        return f"<EventReader {self.topic} on {self.bootstrap_servers} from {self.start}>"

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close()
            raise SinkUnavailable(
                f"cannot read {self.topic} from Kafka at {self.bootstrap_servers}: {exc!r}; "
                "is the broker running (e.g. `dli-bridge local-kafka`), and is "
                "--bootstrap-servers right?",
                topic=self.topic,
            ) from exc
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _open(self) -> None:
        numbers = await _partitions(self.bootstrap_servers, self.topic, self._options)
        partitions = [TopicPartition(self.topic, n) for n in numbers]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            isolation_level="read_committed",
            enable_auto_commit=False,
            **self._options,
        )
        self._consumer = consumer
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await consumer.start()
            offsets = await self._start_offsets(consumer, partitions)
        # assign, not subscribe: a fresh subscription may see no partitions until the next
        # metadata refresh, minutes later. Seek at once, with no await in between, so the
        # fetcher never runs its own offset reset (which logs errors on a new topic).
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, offsets[tp])

    async def _start_offsets(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Explicit start offsets (lookups retry quietly while a new topic gets leaders).

        The end is the last stable offset (read_committed), so an open transaction's
        records are still read once it commits.
        """
        if self.start == "beginning":
            first: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
            return first
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        if self.start == "latest":
            return ends
        found = await consumer.offsets_for_times({tp: self.start for tp in partitions})
        return {tp: hit.offset if (hit := found.get(tp)) else ends[tp] for tp in partitions}

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aiter__(self) -> AsyncIterator[JsonDict]:
        if self._consumer is None:
            raise RuntimeError(f"{self!r} is not open: use `async with`")
        async for record in self._consumer:
            try:
                event = cloudevent(record.value, record.headers)
            except ValueError as exc:
                log.warning(
                    "skipped a record that is not a CloudEvent at %s/%d@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                continue
            if event is not None and self.filters.accepts(event):
                yield event
