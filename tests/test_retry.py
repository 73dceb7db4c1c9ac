"""Full-jitter backoff bounds and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from bridge.retry import Backoff, parse_retry_after

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (40, 30.0), (10_000, 30.0)],
)
def test_ceiling_doubles_up_to_cap(attempt, ceiling):
    assert Backoff(base_s=0.5, cap_s=30.0).ceiling_s(attempt) == ceiling


def test_delay_is_uniform_between_zero_and_ceiling():
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    rng = random.Random(42)
    delays = [backoff.delay_s(3, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    # Full jitter: the whole window is used, not only its upper half.
    assert min(delays) < 0.5
    assert max(delays) > 7.5


def test_delay_uses_the_given_rng():
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    first = [backoff.delay_s(2, random.Random(7)) for _ in range(3)]
    assert first == [random.Random(7).uniform(0, 4.0)] * 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
        ("Thu, 02 Jan 2025 03:04:15 -0000", 10.0),
    ],
)
def test_retry_after_parses_seconds_and_dates(value, expected):
    assert parse_retry_after(value, NOW) == expected
