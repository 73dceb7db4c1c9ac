"""Test doubles shared across modules: a settable clock and a sleep that only records."""

from __future__ import annotations

T0 = 1_700_000_000.0  # an epoch second to pin wall clocks at


class FakeClock:
    """A clock (``() -> float``) that moves only when a test sets or advances ``now``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """An async ``sleep`` that records the requested delays and returns at once.

    With ``clock`` it also advances that clock, so code that sleeps and then reads the time
    sees the time it waited for.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)
