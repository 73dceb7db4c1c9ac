"""Per-project circuit breaker: a sick project fails fast instead of slowing every other one."""

from __future__ import annotations

import enum
import logging
import time

from bridge.errors import CircuitOpen
from bridge.retry import Clock

__all__ = ["BreakerState", "CircuitBreaker"]

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    """CLOSED lets calls through; OPEN refuses them; HALF_OPEN lets one probe through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown_s`` one probe decides.

    The caller brackets every attempt: ``before_attempt()`` (raises CircuitOpen while open),
    then exactly one of ``record_success()``, ``record_failure()`` or ``record_neutral()``
    (an answer that says nothing about the project's health, such as a 429).
    """

    def __init__(
        self, name: str, threshold: int, cooldown_s: float, *, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state} failures={self._failures}>"

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker whose cooldown ran out reads HALF_OPEN."""
        if self._state is BreakerState.OPEN and self._cooldown_left() <= 0:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def before_attempt(self) -> None:
        """Admit one attempt, or raise CircuitOpen with the time until a probe is allowed."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return
        # While a probe is out there is no useful hint: it may settle at any moment.
        wait = self._cooldown_left() if state is BreakerState.OPEN else None
        raise CircuitOpen(
            f"circuit for {self.name} is {state}", retry_after_s=wait, project_id=self.name
        )

    def record_success(self) -> None:
        """The project answered: close the breaker and forget earlier failures."""
        if self._state is not BreakerState.CLOSED:
            log.info("circuit for %s closed", self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def record_failure(self) -> None:
        """A retryable failure: count it, and open on the threshold or a failed probe."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._open()

    def record_neutral(self) -> None:
        """The attempt says nothing about health; a half-open breaker may probe again."""
        self._probing = False

    def _open(self) -> None:
        if self._state is not BreakerState.OPEN:
            log.warning(
                "circuit for %s opened after %d failures, cooldown %.1fs",
                self.name,
                self._failures,
                self.cooldown_s,
            )
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probing = False

    def _cooldown_left(self) -> float:
        return self._opened_at + self.cooldown_s - self._clock()
