"""Async token buckets: a steady request rate with bursts, per project and per credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from bridge.retry import Clock, Sleep

__all__ = ["BucketGroup", "TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; ``acquire()`` takes one.

    A caller that finds the bucket empty reserves the next token (the level goes negative)
    and sleeps exactly until it is due, so waiters are served first come, first served
    without a lock or a polling loop. A cancelled wait gives its reservation back.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()

    def __repr__(self) -> str:
        return f"<TokenBucket {self.rate_per_s:g}/s burst={self.burst} level={self.level:.2f}>"

    @property
    def level(self) -> float:
        """Tokens available now; negative when callers are queued for future tokens."""
        self._refill()
        return self._tokens

    def try_acquire(self) -> bool:
        """Take a token if one is available now, without waiting."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def acquire(self) -> None:
        """Take a token, waiting for it when the bucket is empty."""
        self._refill()
        self._tokens -= 1
        if self._tokens >= 0:
            return
        try:
            await self._sleep(-self._tokens / self.rate_per_s)
        except asyncio.CancelledError:
            self._tokens += 1
            raise

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now


class BucketGroup:
    """One lazily created TokenBucket per key (a project id, a credential id)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}

    def __repr__(self) -> str:
        return f"<BucketGroup {self.rate_per_s:g}/s burst={self.burst} keys={len(self._buckets)}>"

    def __getitem__(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate_per_s, self.burst, clock=self._clock, sleep=self._sleep)
            self._buckets[key] = bucket
        return bucket

    def acquire(self, key: str) -> Coroutine[Any, Any, None]:
        """Take a token from ``key``'s bucket, waiting when it is empty (await it)."""
        return self[key].acquire()
