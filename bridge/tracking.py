"""What the engine remembers per job, and how one observation becomes a change and records.

No I/O here: the scheduler fetches, this module judges what came back against what was last
committed (fingerprint first, parse and diff only when the bytes differ), turns a cycle's
changes into one sink batch, and moves the remembered state once that batch is written.

Every snapshot is redacted (``bridge.redact``) before it is diffed or becomes a record, and so
is every remembered snapshot it is compared with (state written before redaction existed must
not leak through ``before``). Fingerprints are keyed BLAKE2b: they are published in state
records, and an unkeyed hash of a raw body would let a reader test guesses of a weak password.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import orjson

from bridge import events, lifecycle, sweep
from bridge.breaker import BreakerState
from bridge.diff import ChangeKind, JobChange, diff
from bridge.errors import MalformedResponse
from bridge.models import JsonDict
from bridge.redact import Redactor
from bridge.sink import Batch
from bridge.sweep import fingerprint, quick_hash

__all__ = [
    "Cycle",
    "ProjectState",
    "Seen",
    "Tracked",
    "batch",
    "chunks",
    "detail_fingerprint",
    "detail_view",
    "fingerprint",
    "pack",
    "quick_hash",
    "restore",
    "utc",
]

# Distinct malformed bodies remembered per project (so each goes to the DLQ once).
DEAD_LETTER_MEMORY = 10_000
# Re-snapshot request ids remembered per job (in its state record): a request read again
# (another instance, a restart) finds its id and is not answered twice.
ANSWERED_MEMORY = 8

DeadKey = tuple[int | None, bytes]


def detail_view(doc: JsonDict, ignore: Collection[str]) -> JsonDict:
    """What a ``show_detail=true`` list row and a detail both show of a job, ignored fields
    left out: equal for the row and the detail of an unchanged job."""
    return {k: v for k, v in doc.items() if k not in ignore and k not in sweep.DETAIL_ROW_LACKS}


def detail_fingerprint(doc: JsonDict, ignore: Collection[str], key: bytes = b"") -> bytes:
    """The keyed fingerprint of ``detail_view(doc)``."""
    return fingerprint(orjson.dumps(detail_view(doc, ignore), option=orjson.OPT_SORT_KEYS), key)


def pack(snapshot: bytes) -> bytes:
    """A snapshot as kept in memory (level 1: a 2 KB snapshot deflates in ~25 µs, to half)."""
    return zlib.compress(snapshot, 1)


def _interned(status: object) -> str | None:
    """One string object per status name, not one per job."""
    return sys.intern(status) if isinstance(status, str) else None


def _identity(doc: JsonDict) -> JsonDict:
    return doc


def utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass(slots=True)
class Tracked:
    """One job as last committed: its snapshot, deflated, plus the fingerprint it came from.

    Kept by the hundred thousand and read only when a job changed (to diff) or is asked for
    (re-snapshot): deflating halves the largest thing the bridge keeps per job.
    """

    sequence: int
    packed: bytes  # zlib of the compact JSON snapshot (see ``pack``)
    fingerprint: bytes  # of the body (detail) or row bytes (sweep) the snapshot came from
    observed_at: datetime
    known: sweep.Known
    answered: tuple[str, ...] = ()  # re-snapshot requests this job already answered
    # hash() of the last body seen with ``fingerprint``, 0 until one is: see ``Cycle.same_body``
    quick: int = 0

    @property
    def snapshot(self) -> bytes:
        """The snapshot as compact JSON."""
        return zlib.decompress(self.packed)

    def touch(self, row_fp: bytes | None, observed: float) -> None:
        """Seen again, unchanged: the list-mode plan counts it as freshly fetched."""
        self.known.detail_at = observed
        if row_fp is not None:
            self.known.row_fp = row_fp


@dataclass(slots=True)
class Seen:
    """A change one cycle observed, waiting for its commit."""

    job_id: int
    change: JobChange
    snapshot: bytes | None  # None: deleted
    fingerprint: bytes
    row_fp: bytes | None
    observed_at: float  # epoch seconds
    publish: bool = True  # False: its kind is filtered out; state moves, no event, no sequence
    answers: str | None = None  # a snapshot event: the re-snapshot request it answers
    before: bytes | None = None  # the previous snapshot, compact (updated and deleted events)
    name: str | None = None  # the job's name, for the event
    detail_fp: bytes | None = None  # see detail_fingerprint

    @classmethod
    def of(
        cls,
        job_id: int,
        change: JobChange,
        fp: bytes,
        row_fp: bytes | None,
        observed: float,
        *,
        answers: str | None = None,
        detail_fp: bytes | None = None,
    ) -> Seen:
        """A change kept as compact bytes: a cycle may hold thousands until its commit (a
        first sweep), and parsed documents cost ten times their JSON in memory."""
        before, after = change.before, change.after
        return cls(
            job_id,
            replace(change, before=None, after=None),
            None if after is None else events.compact_json(after),
            fp,
            row_fp,
            observed,
            answers=answers,
            before=None if before is None else events.compact_json(before),
            name=_job_name(change),
            detail_fp=detail_fp,
        )


def _answered(before: tuple[str, ...], seen: Seen) -> tuple[str, ...]:
    if seen.answers is None:
        return before
    return (*before, seen.answers)[-ANSWERED_MEMORY:]


@dataclass(slots=True, eq=False)
class ProjectState:
    """The jobs of one project; replaced wholesale whenever its shard is restored."""

    project_id: str
    jobs: dict[int, Tracked] = field(default_factory=dict)
    discovering: bool = True  # no restored state: the first complete sweep says "discovered"
    to_discover: set[int] | None = None  # the jobs of that sweep not yet committed
    swept_from: float | None = None  # when the bridge first looked at it (epoch s; see discovers)
    transitional: set[int] = field(default_factory=set)
    sent_dead_letters: set[DeadKey] = field(default_factory=set)
    last_breaker: BreakerState = BreakerState.CLOSED
    sweep_failing: bool = False
    parked: set[int] = field(default_factory=set)  # tracked jobs outside the filters now
    watermark_at: float = 0.0  # the last "observed through" written (epoch seconds)
    stalled_since: float | None = None  # when its watermark stopped advancing

    def park(self, accepted: Iterable[int], rejected: Iterable[int]) -> None:
        """After a complete sweep: tracked jobs whose row the filters reject are parked (no
        detail calls, no events, never deleted); a parked job accepted again is back."""
        self.parked.difference_update(accepted)
        self.parked.update(j for j in rejected if j in self.jobs)
        self.parked.intersection_update(self.jobs)
        self.transitional.difference_update(self.parked)

    def watched(self) -> dict[int, Tracked]:
        """The tracked jobs inside the filters."""
        if not self.parked:
            return self.jobs
        return {j: t for j, t in self.jobs.items() if j not in self.parked}

    def discovers(self, job_id: int, created_ms: object = None) -> bool:
        """Whether a first sight of ``job_id`` is a discovery (else it was created).

        A job of the first sweep is; so is a job DLI created (``create_time``, epoch ms)
        before the bridge first looked at the project. A shard restored from part of a first
        sweep (its process killed between the sweep's transactions) is no longer
        discovering, and the jobs its restore did not bring back were there all along.
        """
        if self.discovering and (self.to_discover is None or job_id in self.to_discover):
            return True
        if self.swept_from is None or type(created_ms) is not int:
            return False
        return created_ms < self.swept_from * 1000.0

    def note_sweep(self, rows: Iterable[int]) -> None:
        """After a complete sweep's commit: discovery ends once its jobs are all known.

        A job of the first sweep whose detail failed (throttled, malformed) is still
        ``discovered`` when it finally comes through; a job that appears later is created.
        """
        if not self.discovering:
            return
        listed = set(rows)
        pending = listed if self.to_discover is None else self.to_discover & listed
        self.to_discover = pending - self.jobs.keys()
        if not self.to_discover:
            self.discovering, self.to_discover = False, None

    def set_status(self, job_id: int, status: str | None) -> None:
        if status in lifecycle.TRANSITIONAL:
            self.transitional.add(job_id)
        else:
            self.transitional.discard(job_id)

    def commit(self, chunk: Sequence[Seen], dead: Sequence[DeadKey]) -> None:
        """After the write returned: the written changes become what we remember."""
        for seen in chunk:
            tracked = self.jobs.get(seen.job_id)
            if seen.snapshot is None:
                self.jobs.pop(seen.job_id, None)
                self.set_status(seen.job_id, None)
                continue
            status = _interned(seen.change.status_after)
            known = tracked.known if tracked is not None else sweep.Known(None, None, None)
            if seen.change.kind is ChangeKind.DISCOVERED:
                known.status_since = sweep.SINCE_BEFORE  # in it since before we looked
            elif tracked is None or known.status != status:
                known.status_since = seen.observed_at
            known.status, known.detail_at = status, seen.observed_at
            if seen.row_fp is not None:
                known.row_fp = seen.row_fp
            if seen.detail_fp is not None:
                known.detail_fp = seen.detail_fp
            sequence = (tracked.sequence if tracked is not None else 0) + seen.publish
            answered = _answered(tracked.answered if tracked is not None else (), seen)
            packed, observed_at = pack(seen.snapshot), utc(seen.observed_at)
            self.jobs[seen.job_id] = Tracked(
                sequence, packed, seen.fingerprint, observed_at, known, answered
            )
            self.set_status(seen.job_id, status)
        if len(self.sent_dead_letters) + len(dead) > DEAD_LETTER_MEMORY:
            self.sent_dead_letters.clear()
        self.sent_dead_letters.update(dead)


@dataclass(slots=True)
class Cycle:
    """What one poll cycle of one project collected, judged against the project's state."""

    project: ProjectState
    epoch: int
    ignore: Collection[str]
    redactor: Redactor | None = None
    fp_key: bytes = b""
    seen: list[Seen] = field(default_factory=list)
    dead: dict[DeadKey, events.OutRecord] = field(default_factory=dict)
    dead_reasons: dict[DeadKey, str] = field(default_factory=dict)  # the metric's label
    rows: dict[int, JsonDict] | None = None
    row_fps: dict[int, bytes] = field(default_factory=dict)
    started: float = 0.0  # when its list sweep began (epoch seconds)
    reconcile: bool = False  # list mode: this sweep lists show_detail rows to reconcile
    failed: int = 0  # detail calls that did not answer (throttled, 5xx, breaker, auth)
    counted: bool = False  # detail mode: the job count stood in for the list (see `present`)
    doubted: int = 0  # detail calls that did not show their job exists ("no such job", refused)
    written: int = 0  # the first ``written`` of ``seen`` are written and committed to state
    writing: bool = False  # a write of some of ``seen`` is under way (one at a time)
    write_failed: bool = False  # one did not return: nothing more of the cycle is written

    @property
    def present(self) -> Mapping[int, object] | None:
        """Every job the cycle's complete sweep found, or None when it did not complete.

        The listed rows; or, when the cycle only counted the list (detail mode), the jobs we
        know: the count equals them, and each then answered its detail call, so no job came or
        went before the count (job ids are never reused). A count some job puts in doubt (its
        call failed, found no job or was refused) is replaced by the list, in the same cycle.
        """
        if self.rows is not None:
            return self.rows
        return self.project.jobs if self.counted else None

    def observed_through(self) -> float | None:
        """How far this cycle observed the project completely, or None when it did not.

        Complete means: the sweep completed and every planned detail call answered. The time
        is the sweep's start, lowered to the oldest detail view of any job this cycle did not
        observe afresh (list mode sees config edits only on reconcile; a missing job's last
        view is when it was last seen), and never below the previous watermark.
        """
        if self.present is None or self.failed:
            return None
        fresh = {seen.job_id: seen.observed_at for seen in self.seen}
        through = self.started
        for job_id, tracked in self.project.watched().items():
            through = min(through, fresh.get(job_id, tracked.known.detail_at or 0.0))
        return max(through, self.project.watermark_at)

    def same_body(self, job_id: int, quick: int, observed: float) -> bool:
        """The very body this process last saw with the job's fingerprint, by ``hash()``.

        Python's bytes hash is SipHash under a key drawn at random for each process (unless
        PYTHONHASHSEED pins it: ``QUICK_HASH`` is then off), 64 bits: a fifteenth of the
        keyed BLAKE2b's cost on a detail body, so an unchanged job, most of every poll, skips
        it. The BLAKE2b fingerprint stays what state records carry and restores compare.
        """
        tracked = self.project.jobs.get(job_id)
        if tracked is None or not quick or tracked.quick != quick:
            return False
        tracked.touch(self.row_fps.get(job_id), observed)
        return True

    def unchanged(self, job_id: int, fp: bytes, observed: float, quick: int = 0) -> bool:
        """The same bytes as last time: unchanged, and nothing was parsed to know it
        (``quick``, the body's ``hash()``, is remembered for ``same_body``)."""
        tracked = self.project.jobs.get(job_id)
        if tracked is None or tracked.fingerprint != fp:
            return False
        tracked.quick = quick
        tracked.touch(self.row_fps.get(job_id), observed)
        return True

    @property
    def redact(self) -> Callable[[JsonDict], JsonDict]:
        return _identity if self.redactor is None else self.redactor.redact

    def remembered(self, tracked: Tracked) -> JsonDict:
        """A committed snapshot, redacted (a no-op for what this version wrote)."""
        return self.redact(orjson.loads(tracked.snapshot))

    def judge(self, job_id: int, raw: JsonDict, fp: bytes, observed: float) -> None:
        """Compare a fresh (raw) view of a job with memory; both sides redacted first.

        Called for bytes ``unchanged`` did not recognise (the caller asks it first, before
        parsing or validating anything)."""
        tracked = self.project.jobs.get(job_id)
        before = self.remembered(tracked) if tracked is not None else None
        after = self.redact(raw)
        first = tracked is None and self.project.discovers(job_id, raw.get("create_time"))
        change = diff(before, after, ignore=self.ignore, first_sweep=first)
        detail_fp = detail_fingerprint(raw, self.ignore, self.fp_key)
        if change is None:
            assert tracked is not None  # diff(None, doc) is always a change
            tracked.fingerprint = fp  # only ignored fields moved: remember the new bytes
            tracked.quick = 0
            tracked.known.detail_fp = detail_fp
            tracked.touch(self.row_fps.get(job_id), observed)
            return
        row_fp = self.row_fps.get(job_id)
        self.seen.append(Seen.of(job_id, change, fp, row_fp, observed, detail_fp=detail_fp))

    def deleted(self, job_id: int, observed: float) -> None:
        tracked = self.project.jobs.get(job_id)
        if tracked is None:
            return
        change = diff(self.remembered(tracked), None, ignore=self.ignore)
        if change is not None:
            self.seen.append(Seen.of(job_id, change, b"", None, observed))

    def dead_letter(self, job_id: int | None, exc: MalformedResponse, observed: float) -> None:
        """One dead letter per distinct broken answer, not one per poll."""
        error = f"{exc.message}: {exc.detail}" if exc.detail else exc.message
        # A list page carries volatile fields (duration), so its bytes differ on every sweep:
        # a broken page is remembered by what is wrong with it, a job's body by its bytes.
        raw_key = exc.body if job_id is not None else error.encode()
        key = (job_id, fingerprint(raw_key, self.fp_key))
        if key in self.project.sent_dead_letters or key in self.dead:
            return
        body = exc.body
        if self.redactor is not None:  # the body, and an error text that may quote it
            body = self.redactor.redact_bytes_for_dead_letter(body)
            error = self.redactor.redact_bytes_for_dead_letter(error.encode()).decode()
        self.dead_reasons[key] = "list_page" if job_id is None else exc.reason
        self.dead[key] = events.dead_letter(
            project_id=self.project.project_id,
            job_id=job_id,
            body=body,
            error=error,
            request_id=exc.request_id,
            observed_at=utc(observed),
        )


def restore(
    projects: Mapping[str, ProjectState], restored: Mapping[bytes, events.StateValue]
) -> tuple[dict[str, ProjectState], int]:
    """Fresh project states from a shard's restored state; also how many records were ignored
    (projects this instance does not watch). Dead-letter memory and breaker state carry over;
    a project's ``swept_from`` is its earliest restored observation (or this process's own).
    """
    fresh = {
        pid: ProjectState(
            pid,
            sent_dead_letters=old.sent_dead_letters,
            last_breaker=old.last_breaker,
            swept_from=old.swept_from,
        )
        for pid, old in projects.items()
    }
    ignored = 0
    for value in restored.values():
        project = fresh.get(value.project_id)
        if project is None:
            ignored += 1
            continue
        status = _interned(orjson.loads(value.snapshot).get("status"))
        observed = value.observed_at
        at = observed.timestamp()
        # when it entered its status is not in the record: like a first sight, no fast lane
        # until the bridge sees it move (a shard handed over is not fast-polled all again)
        known = sweep.Known(value.row_fingerprint, at, status, status_since=sweep.SINCE_BEFORE)
        project.jobs[value.job_id] = Tracked(
            value.sequence, pack(value.snapshot), value.fingerprint, observed, known, value.answered
        )
        project.discovering = False
        project.set_status(value.job_id, status)
        project.swept_from = at if project.swept_from is None else min(project.swept_from, at)
    return fresh, ignored


def batch(
    project: ProjectState,
    chunk: Sequence[Seen],
    dead: Sequence[events.OutRecord],
    *,
    options: events.EventOptions,
    generation: int,
) -> Batch:
    """The records of ``chunk``: one event and one state record (or tombstone) per job."""
    pid = project.project_id
    out: list[events.OutRecord] = []
    state: list[events.OutRecord] = []
    # a job seen twice in one chunk (a change, then a snapshot): the second goes on from the first
    sequences: dict[int, int] = {}
    answers: dict[int, tuple[str, ...]] = {}
    for seen in chunk:
        tracked = project.jobs.get(seen.job_id)
        last = sequences.get(seen.job_id, tracked.sequence if tracked is not None else 0)
        sequence = sequences[seen.job_id] = last + seen.publish
        before = answers.get(seen.job_id, tracked.answered if tracked is not None else ())
        answered = answers[seen.job_id] = _answered(before, seen)
        observed_at = utc(seen.observed_at)
        if seen.publish:
            out.append(_event(project, seen, tracked, sequence, options))
        if seen.snapshot is None:
            state.append(events.state_tombstone(pid, seen.job_id, generation))
            continue
        row_fp = seen.row_fp
        if row_fp is None and tracked is not None:
            row_fp = tracked.known.row_fp
        state.append(
            events.state_record(
                project_id=pid,
                job_id=seen.job_id,
                sequence=sequence,
                snapshot=seen.snapshot,
                fingerprint=seen.fingerprint,
                row_fingerprint=row_fp,
                observed_at=observed_at,
                generation=generation,
                answered=answered,
            )
        )
    return Batch(events=out, state=state, dead_letters=dead)


def _event(
    project: ProjectState,
    seen: Seen,
    tracked: Tracked | None,
    sequence: int,
    options: events.EventOptions,
) -> events.OutRecord:
    return events.build_event(
        seen.change,
        project_id=project.project_id,
        job_id=seen.job_id,
        job_name=seen.name,
        sequence=sequence,
        observed_at=utc(seen.observed_at),
        previous_observed_at=tracked.observed_at if tracked is not None else None,
        options=options,
        before_json=seen.before,
        after_json=seen.snapshot,
    )


def chunks(items: Sequence[Seen], size: int) -> Iterator[Sequence[Seen]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _job_name(change: JobChange) -> str | None:
    doc = change.after if change.after is not None else change.before
    name = doc.get("name") if doc is not None else None
    return name if isinstance(name, str) else None
