"""The circuit breaker opens on consecutive failures and lets one probe through after cooldown."""

from __future__ import annotations

import pytest

from bridge.breaker import BreakerState, CircuitBreaker
from bridge.errors import CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, threshold: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker("p1", threshold, cooldown_s, clock=clock)


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property, so mypy does not narrow the state between two checks.
    return breaker.state


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_attempt()
        breaker.record_failure()


def test_opens_after_threshold_consecutive_failures():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 2)
    assert _state(breaker) is BreakerState.CLOSED
    _fail(breaker, 1)
    assert _state(breaker) is BreakerState.OPEN


def test_success_resets_the_count():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 2)
    breaker.record_success()
    _fail(breaker, 2)
    assert _state(breaker) is BreakerState.CLOSED


def test_neutral_outcome_does_not_reset_the_count():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 2)
    breaker.record_neutral()
    _fail(breaker, 1)
    assert _state(breaker) is BreakerState.OPEN


def test_open_breaker_refuses_with_time_left():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 4.0
    with pytest.raises(CircuitOpen) as caught:
        breaker.before_attempt()
    assert caught.value.retry_after_s == pytest.approx(6.0)
    assert caught.value.project_id == "p1"
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("probe_outcome", "state_after"),
    [
        ("record_success", BreakerState.CLOSED),
        ("record_failure", BreakerState.OPEN),
        ("record_neutral", BreakerState.HALF_OPEN),
    ],
)
def test_half_open_probe_decides(probe_outcome, state_after):
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 10.0
    assert _state(breaker) is BreakerState.HALF_OPEN
    breaker.before_attempt()
    getattr(breaker, probe_outcome)()
    assert _state(breaker) is state_after


def test_half_open_lets_only_one_probe_through():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 10.0
    breaker.before_attempt()
    with pytest.raises(CircuitOpen) as caught:
        breaker.before_attempt()
    assert caught.value.retry_after_s is None


def test_failed_probe_restarts_the_cooldown():
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 10.0
    _fail(breaker, 1)
    clock.now += 9.0
    assert _state(breaker) is BreakerState.OPEN
    clock.now += 1.0
    assert _state(breaker) is BreakerState.HALF_OPEN


def test_repr_names_project_and_state():
    breaker = _breaker(Clock())
    assert repr(breaker) == "<CircuitBreaker 'p1' closed failures=0>"
