"""Tests for ``cachepatterns_app.breaker``: the circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cachepatterns_app.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.store import get_store

ERROR = ConnectionError("refused")


class Clock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, threshold: int = 3, cooldown: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("test", threshold=threshold, cooldown=cooldown, clock=clock)


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.threshold):
        breaker.failure(ERROR)
    assert breaker.state == OPEN


def test_starts_closed_and_allows_calls(clock: Clock) -> None:
    breaker = make(clock)
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(10))


def test_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    breaker = make(clock, threshold=3)
    breaker.failure(ERROR)
    breaker.failure(ERROR)
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.failure(ERROR)
    assert breaker.state == OPEN
    assert not breaker.allow()


def test_a_success_resets_the_failure_count(clock: Clock) -> None:
    breaker = make(clock, threshold=3)
    for _ in range(5):
        breaker.failure(ERROR)
        breaker.failure(ERROR)
        breaker.success()
    assert breaker.state == CLOSED


@pytest.mark.parametrize("threshold", [0, -5])
def test_threshold_below_one_means_one(clock: Clock, threshold: int) -> None:
    breaker = make(clock, threshold=threshold)
    breaker.failure(ERROR)
    assert breaker.state == OPEN


def test_fails_fast_while_open(clock: Clock) -> None:
    breaker = make(clock, cooldown=5.0)
    open_breaker(breaker)
    for _ in range(10):
        clock.advance(0.49)
        assert not breaker.allow()
    assert breaker.state == OPEN


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    breaker = make(clock, cooldown=5.0)
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN
    assert not any(breaker.allow() for _ in range(10))


def test_one_probe_among_racing_threads(clock: Clock) -> None:
    breaker = make(clock, cooldown=5.0)
    open_breaker(breaker)
    clock.advance(5.0)
    start = threading.Barrier(32)
    allowed: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        ok = breaker.allow()
        with lock:
            allowed.append(ok)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


def test_probe_success_closes_and_runs_on_close_once(clock: Clock) -> None:
    breaker = make(clock)
    calls: list[str] = []
    breaker.on_close.append(lambda: calls.append("first"))
    breaker.on_close.append(lambda: calls.append("second"))
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()

    breaker.success()

    assert breaker.state == CLOSED
    assert calls == ["first", "second"]
    assert all(breaker.allow() for _ in range(5))
    breaker.success()
    assert calls == ["first", "second"]


def test_on_close_is_not_run_by_successes_while_closed(clock: Clock) -> None:
    breaker = make(clock)
    calls: list[int] = []
    breaker.on_close.append(lambda: calls.append(1))
    breaker.failure(ERROR)
    breaker.success()
    breaker.success()
    assert calls == []


def test_probe_failure_reopens_for_a_full_cooldown(clock: Clock) -> None:
    breaker = make(clock, threshold=3, cooldown=5.0)
    open_breaker(breaker)
    clock.advance(7.0)
    assert breaker.allow()

    # One failed probe is enough, whatever the threshold.
    breaker.failure(ERROR)

    assert breaker.state == OPEN
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN


def test_recovers_after_repeated_failed_probes(clock: Clock) -> None:
    breaker = make(clock, cooldown=1.0)
    open_breaker(breaker)
    for _ in range(5):
        clock.advance(1.0)
        assert breaker.allow()
        breaker.failure(ERROR)
        assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED


def test_a_lost_probe_does_not_wedge_the_breaker(clock: Clock) -> None:
    breaker = make(clock, cooldown=5.0)
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    # The probe's caller never reports back; a cooldown later someone must try again.
    clock.advance(60.0)
    assert breaker.allow()


def test_fire_and_forget_probe_closes_the_breaker_against_real_redis(clock: Clock, redis: Any) -> None:
    store = get_store()
    store.breaker = make(clock, threshold=1, cooldown=5.0)
    store.breaker.failure(ERROR)
    clock.advance(5.0)

    store.send_no_reply([("SET", "cpt:breaker-probe", "1")])

    try:
        assert store.execute("PING")
    except CacheUnavailable:
        pytest.fail("Redis answers, but the breaker still refuses every call")
