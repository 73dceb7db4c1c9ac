"""Per-request timeouts that share one timer per tick instead of one timer each.

``asyncio.timeout`` schedules, reschedules and cancels a timer handle for every block: at a
few hundred requests a second that is several µs of every request's CPU, for timers that
almost never fire. A request's timeout needs no such precision, so ``Deadlines`` puts every
block that starts within one tick into one group with one timer: a block times out between
``timeout_s`` and ``timeout_s + tick_s`` after it started (``tick_s`` is a tenth of the
timeout, at most 1 s). When the timer fires, every task still inside a block of the group is
cancelled, and the block turns that cancellation into ``TimeoutError`` exactly as
``asyncio.timeout`` does; a cancellation from elsewhere stays a ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["Deadlines"]

MAX_TICK_S = 1.0


class _Group:
    """The tasks inside blocks that started within one tick, and whether their time is up."""

    __slots__ = ("expired", "tasks")

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.expired = False


class Deadlines:
    """``async with deadlines():`` bounds the block by ``timeout_s`` (plus under a tick).

    One instance serves any number of concurrent blocks on one event loop.
    """

    __slots__ = ("_groups", "tick_s", "timeout_s")

    def __init__(self, timeout_s: float, *, tick_s: float | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.timeout_s = timeout_s
        self.tick_s = tick_s if tick_s is not None else min(MAX_TICK_S, timeout_s / 10)
        self._groups: dict[int, _Group] = {}

    def __repr__(self) -> str:
        return f"<Deadlines {self.timeout_s:g} s tick={self.tick_s:g} s groups={len(self._groups)}>"

    def __call__(self) -> _Block:
        return _Block(self)

    def _join(self, task: asyncio.Task[object]) -> _Group:
        loop = task.get_loop()
        key = math.ceil((loop.time() + self.timeout_s) / self.tick_s)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            loop.call_at(key * self.tick_s, self._expire, key)
        group.tasks.add(task)
        return group

    def _expire(self, key: int) -> None:
        group = self._groups.pop(key)
        group.expired = True
        for task in group.tasks:
            task.cancel()


class _Block:
    __slots__ = ("_cancelling", "_deadlines", "_group", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._group = self._deadlines._join(task)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, task = self._group, self._task
        group.tasks.discard(task)
        if (
            group.expired
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
            and task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc
