"""Token buckets pace callers on an injected clock, without real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from bridge.ratelimit import BucketGroup, TokenBucket


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _bucket(t: FakeTime, rate: float = 2.0, burst: int = 3) -> TokenBucket:
    return TokenBucket(rate, burst, clock=t.clock, sleep=t.sleep)


async def test_burst_is_served_without_waiting():
    t = FakeTime()
    bucket = _bucket(t)
    for _ in range(3):
        await bucket.acquire()
    assert t.sleeps == []


async def test_empty_bucket_waits_for_next_token():
    t = FakeTime()
    bucket = _bucket(t, rate=2.0, burst=1)
    await bucket.acquire()
    await bucket.acquire()
    assert t.sleeps == [pytest.approx(0.5)]


async def test_refill_is_capped_at_burst():
    t = FakeTime()
    bucket = _bucket(t, rate=2.0, burst=3)
    t.now = 1000.0
    assert bucket.level == 3.0


async def test_queued_callers_are_spaced_by_the_rate():
    """Waiters reserve tokens in turn, so the n-th one waits n/rate, not all 1/rate."""
    t = FakeTime()
    bucket = TokenBucket(4.0, 1, clock=t.clock, sleep=_recording_only(t))
    await bucket.acquire()
    await asyncio.gather(*(bucket.acquire() for _ in range(3)))
    assert t.sleeps == [pytest.approx(0.25), pytest.approx(0.5), pytest.approx(0.75)]


def _recording_only(t: FakeTime):
    async def sleep(seconds: float) -> None:
        t.sleeps.append(seconds)

    return sleep


async def test_cancelled_wait_returns_its_reservation():
    t = FakeTime()
    gate = asyncio.Event()

    async def blocked(seconds: float) -> None:
        await gate.wait()

    bucket = TokenBucket(1.0, 1, clock=t.clock, sleep=blocked)
    await bucket.acquire()
    assert bucket.level == 0.0
    waiter = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    assert bucket.level == -1.0
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.level == 0.0


def test_try_acquire_does_not_wait():
    t = FakeTime()
    bucket = _bucket(t, rate=1.0, burst=1)
    assert bucket.try_acquire() is True
    assert bucket.try_acquire() is False
    t.now += 1.0
    assert bucket.try_acquire() is True


async def test_group_keeps_one_bucket_per_key():
    t = FakeTime()
    group = BucketGroup(1.0, 1, clock=t.clock, sleep=t.sleep)
    await group.acquire("a")
    await group.acquire("b")
    assert t.sleeps == []
    await group.acquire("a")
    assert t.sleeps == [pytest.approx(1.0)]
    assert group["a"] is group["a"]
    assert "keys=2" in repr(group)
