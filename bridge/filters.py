"""Which jobs the bridge tracks and which event kinds it publishes, decided from a list row.

API (pure; the engine calls these)::

    job_filter = JobFilter(FilterSettings(...))        # settings mounted as [filters]
    job_filter.accepts_row(project_id, row) -> bool    # a light list row is enough
    job_filter.publishes(kind) -> bool                 # kind: a ChangeKind value

Settings: deployment-wide ``include_names`` / ``exclude_names`` (``fnmatch`` globs, matched
case-sensitively on ``name``), ``job_types`` and ``queues`` (exact values of ``job_type`` and
``queue_name``; empty = any), and ``projects.<project_id>`` overriding any of those four for one
project (a field it leaves unset inherits the deployment's). ``event_kinds`` (empty = all) is
deployment-wide. A job is accepted when its name matches an include pattern (or there are none),
matches no exclude pattern, and its job type and queue are listed (or the lists are empty). A
row without the field a non-empty rule needs (no ``name``, no ``queue_name``) is rejected: a
filter never lets through what it cannot check.

The engine asks ``accepts_row`` before planning detail calls, so a filtered-out job costs no
detail request and is never diffed, stored or published.

**A job leaving the filter is not deleted.** When a tracked job stops matching (renamed, moved
to another queue, type changed) the engine *parks* it: no detail calls, no ``deleted`` event, no
final event of any kind, and its state record stays as it was (no tombstone). Consumers see no
further events for it; the last event they saw is its last state *inside* the filter. Should it
match again, the next observation is diffed against that last state: one ``updated`` (or
``status_changed``) event with the next sequence number, listing everything that changed while
it was out (the rename back, say). A parked job deleted in DLI is never reported. Nothing is the
simplest safe choice: a ``deleted`` would be a lie about the job, and a special "left the
filter" kind would be a new event type every consumer has to learn.

**Event kinds.** A change whose kind ``publishes`` refuses still moves the job's state (it is
not detected again) but writes no event and takes no sequence number: sequences stay
contiguous in what is published. Requested ``snapshot`` events are always published.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from bridge.diff import ChangeKind
from bridge.models import JsonDict

__all__ = ["FilterSettings", "JobFilter", "JobRule", "ProjectFilter"]

log = logging.getLogger(__name__)

_GROUP = ConfigDict(extra="forbid", frozen=True)
_ALL_KINDS = frozenset(ChangeKind)


class ProjectFilter(BaseModel):
    """One project's overrides; a field left as None inherits the deployment's value."""

    model_config = _GROUP

    include_names: list[str] | None = None
    exclude_names: list[str] | None = None
    job_types: list[str] | None = None
    queues: list[str] | None = None


class FilterSettings(BaseModel):
    """``[filters]``: which jobs are tracked and which event kinds are published."""

    model_config = _GROUP

    include_names: list[str] = Field(default_factory=list)  # globs; empty = every name
    exclude_names: list[str] = Field(default_factory=list)
    job_types: list[str] = Field(default_factory=list)  # empty = every type
    queues: list[str] = Field(default_factory=list)  # empty = every queue
    event_kinds: list[ChangeKind] = Field(default_factory=list)  # empty = every kind
    projects: dict[str, ProjectFilter] = Field(default_factory=dict)


class JobRule(BaseModel):
    """The effective rule for one project (deployment values with its overrides applied)."""

    model_config = _GROUP

    include_names: tuple[str, ...] = ()
    exclude_names: tuple[str, ...] = ()
    job_types: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()

    def accepts(self, row: JsonDict) -> bool:
        """True when ``row`` passes every rule (see the module docstring)."""
        name = row.get("name")
        if self.include_names and not _matches(name, self.include_names):
            return False
        if self.exclude_names and _matches(name, self.exclude_names):
            return False
        if self.job_types and row.get("job_type") not in self.job_types:
            return False
        return not self.queues or row.get("queue_name") in self.queues


class JobFilter:
    """The deployment's filters, resolved per project once; immutable, safe to share."""

    def __init__(self, settings: FilterSettings) -> None:
        self._default = _rule(settings, None)
        self._rules = {pid: _rule(settings, over) for pid, over in settings.projects.items()}
        self._kinds = frozenset(settings.event_kinds)

    def __repr__(self) -> str:
        kinds = "all" if not self._kinds else ",".join(sorted(self._kinds))
        return f"<JobFilter projects={len(self._rules)} kinds={kinds}>"

    def rule(self, project_id: str) -> JobRule:
        """The rule applied to ``project_id``'s rows."""
        return self._rules.get(project_id, self._default)

    def accepts_row(self, project_id: str, row: JsonDict) -> bool:
        """Whether the job of this list row is tracked at all (decided before any detail call)."""
        return self.rule(project_id).accepts(row)

    def publishes(self, kind: str) -> bool:
        """Whether events of ``kind`` are published (a kind we do not know is not)."""
        return kind in (self._kinds or _ALL_KINDS)


def _rule(settings: FilterSettings, over: ProjectFilter | None) -> JobRule:
    def pick(field: str) -> list[str]:
        value: list[str] | None = None if over is None else getattr(over, field)
        return list(getattr(settings, field)) if value is None else value

    return JobRule(
        include_names=tuple(pick("include_names")),
        exclude_names=tuple(pick("exclude_names")),
        job_types=frozenset(pick("job_types")),
        queues=frozenset(pick("queues")),
    )


def _matches(name: object, patterns: Sequence[str]) -> bool:
    """Case-sensitive glob match (``fnmatch.fnmatch`` would fold case on some systems)."""
    return isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
