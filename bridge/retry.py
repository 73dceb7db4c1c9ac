"""Retry pacing: exponential backoff with full jitter, and the server's Retry-After hint."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "Clock", "Sleep", "parse_retry_after"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: attempt ``n`` waits ``uniform(0, min(cap, base·2ⁿ))``.

    Full jitter (rather than equal or no jitter) spreads the retries of many callers hit by
    the same outage evenly over the window, so they do not come back in lockstep.
    """

    base_s: float
    cap_s: float

    def ceiling_s(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` (0-based) may wait."""
        # min() before the power would still overflow for huge attempts; cap the exponent.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 62))

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """A random delay in ``[0, ceiling_s(attempt)]``."""
        return rng.uniform(0.0, self.ceiling_s(attempt))


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None.

    A date in the past means "now" (0.0); an unparseable value is ignored (None) so the
    caller falls back to its own backoff.
    """
    text = (value or "").strip()
    if not text:
        return None
    seconds = _as_seconds(text)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete "-0000" zone parses naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch_s)


def _as_seconds(text: str) -> float | None:
    # RFC 9110 allows only integers; some gateways send "1.5", which is just as clear.
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
