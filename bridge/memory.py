"""After a large write or restore: the kept state out of the collector's way, freed memory back.

A first sweep builds, commits and drops a few hundred megabytes of records and parsed bodies
at 100k jobs. CPython frees them, but glibc keeps the freed pages in its heap, so the
process's resident size stays at the peak for the rest of its life. ``malloc_trim(0)``
returns every free page of the heap (not only its top) to the system; it takes a few
milliseconds, so it runs once, a few seconds after a large write (later large writes in those
seconds join it).
Elsewhere (musl, macOS) that part is a no-op.

The same moment is when the state just grew by a large step, so the objects alive then are
frozen (``gc.freeze``): the cyclic collector stops scanning them. At 100k jobs each of its full
collections walked the whole kept state, about a quarter of a second every half minute (5 %
of the engine's CPU, and a pause). The kept state is acyclic and still freed by reference
counting when a job changes or goes; the young generations are collected first, so no cycle
of garbage is frozen with it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

__all__ = ["Trimmer"]

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], object] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return lambda: trim(0)


class Trimmer:
    """Freezes the live objects and trims the heap ``delay_s`` after a large write or restore
    (later large ones join it)."""

    def __init__(self, *, min_jobs: int = 100, delay_s: float = 5.0) -> None:
        self._trim = _malloc_trim()
        self._min_jobs = min_jobs
        self._delay_s = delay_s
        self._pending: asyncio.TimerHandle | None = None
        self.trims = 0

    def __repr__(self) -> str:
        able = "glibc" if self._trim is not None else "unavailable"
        return f"<Trimmer {able}: {self._delay_s:g} s after a write of >= {self._min_jobs} jobs>"

    def after_write(self, jobs: int) -> bool:
        """Note a write (or restore) of ``jobs`` jobs, in a running loop; True if a trim is due."""
        if jobs < self._min_jobs:
            return False
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self._delay_s, self._run)
        return True

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _run(self) -> None:
        self._pending = None
        started = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        if self._trim is not None:
            self._trim()
        self.trims += 1
        log.debug(
            "%d objects frozen, heap trimmed in %.1f ms",
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1e3,
        )
