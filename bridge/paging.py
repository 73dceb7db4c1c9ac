"""Offset paging over a job list that changes while it is read: overlap one row, step back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bridge.errors import ApiUnavailable
from bridge.models import Fetched, JobListItem, JobRow
from bridge.settings import MAX_PAGE_SIZE

__all__ = ["MAX_STEP_BACKS", "PageScan", "model_id"]

Row = TypeVar("Row", JobListItem, JobRow)
R = TypeVar("R")

# Each step back re-reads one page; this many in one sweep means the list churns faster than
# we can read it, and the sweep is better retried later than continued.
MAX_STEP_BACKS = 50


class PageScan:
    """Offset paging over a list that changes while we read it (``order=asc``).

    Each page after the first starts one row early, on the last row already taken. If a
    deletion shifted the rows left, that page holds no row we have seen: rows may have
    slipped past the boundary unseen, so the scan steps one page back and reads again.
    Rows are deduplicated by ``job_id``; jobs created mid-scan land at the end (ascending
    order) and are picked up. ``offset`` is None when the scan is complete: after a short page,
    or after a page that reaches the list's end by its own answer's count of every match (a
    full last page then needs no empty page after it).
    """

    def __init__(self, limit: int, project_id: str | None = None) -> None:
        # One row of overlap needs at least two rows a page; DLI serves at most 100.
        self.limit = max(2, min(limit, MAX_PAGE_SIZE))
        self.project_id = project_id
        self.offset: int | None = 0
        self.step_backs = 0
        self._seen: set[int] = set()

    def __repr__(self) -> str:
        return f"<PageScan offset={self.offset} seen={len(self._seen)} back={self.step_backs}>"

    def take(self, rows: Sequence[Fetched[Row]]) -> list[Fetched[Row]]:
        """Feed the page read at ``offset``; return its rows not taken before."""
        return self.take_by(rows, model_id)

    def take_by(
        self, rows: Sequence[R], key: Callable[[R], int], total: int | None = None
    ) -> list[R]:
        """``take`` for rows of any shape, ``key`` giving each row's ``job_id``; ``total``, if
        known, is how many rows the whole list held when this page was read."""
        at = self.offset
        if at is None:
            return []
        ids = [key(row) for row in rows]
        if at > 0 and self._seen.isdisjoint(ids):
            self._step_back(at)
            return []
        fresh = []
        for job_id, row in zip(ids, rows, strict=True):
            if job_id not in self._seen:
                self._seen.add(job_id)
                fresh.append(row)
        end = at + len(rows)
        last = len(rows) < self.limit or (total is not None and end >= total)
        self.offset = None if last else end - 1
        return fresh

    def _step_back(self, at: int) -> None:
        self.step_backs += 1
        if self.step_backs > MAX_STEP_BACKS:
            text = f"job list kept shifting: {self.step_backs} re-reads in one sweep"
            raise ApiUnavailable(text, project_id=self.project_id)
        self.offset = max(0, at - (self.limit - 1))


def model_id(row: Fetched[Any]) -> int:
    """A validated row's ``job_id`` (the key ``PageScan.take`` dedupes on)."""
    job_id: int = row.model.job_id
    return job_id
