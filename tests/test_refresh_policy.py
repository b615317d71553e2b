"""
When a refresh-ahead value is due (the window, XFetch), how a failed refresh backs
off, and what is refused where it is written: arguments that cannot travel to a
worker as JSON, methods, ``ttl=None``, bad factors.
"""

from __future__ import annotations

import datetime
import decimal
import math
from typing import Any

import pytest

from cachepatterns_app import CacheAsideManager, refresh_ahead
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.patterns.refresh_ahead import policy, worker, xfetch_gap_ms
from cachepatterns_app.patterns.refresh_ahead.policy import backoff_ms, refresh_due, xfetch_factor
from cachepatterns_app.store import get_store
from tests.ra_support import calls, keys_of, wait_filled, worker_count
from tests.refreshapp.refreshers import wide, xfetched
from tests.support import wait_until

# -- the decision ------------------------------------------------------------------------


def test_xfetch_gap_is_delta_times_beta_times_minus_log_rand():
    assert xfetch_gap_ms(100, 1.0, math.exp(-1)) == pytest.approx(100)
    assert xfetch_gap_ms(100, 2.0, math.exp(-3)) == pytest.approx(600)
    assert xfetch_gap_ms(100, 1.0, 1.0) == 0  # rand 1: never early
    assert xfetch_gap_ms(0, 5.0, 0.01) == 0  # no compute time known
    assert xfetch_gap_ms(100, 0.0, 0.01) == 0  # XFetch off


@pytest.mark.parametrize(
    ("pttl", "delta", "window", "beta", "rand", "due"),
    [
        (5_000, 0, 10_000, 0.0, 0.5, True),  # inside the window
        (50_000, 0, 10_000, 0.0, 0.5, False),
        (50_000, 1_000, 10_000, 1.0, math.exp(-60), True),  # gap 60 s >= 50 s left
        (50_000, 1_000, 10_000, 1.0, math.exp(-40), False),  # gap 40 s < 50 s left
        (50_000, 1_000, 10_000, 0.0, math.exp(-60), False),  # beta 0: the window only
        (50_000, 2_000, 10_000, 1.0, math.exp(-30), True),  # a larger delta: earlier
        (5_000, 1_000, 10_000, 1.0, math.exp(-1), False),  # XFetch instead of the window
        (5_000, 0, 10_000, 1.0, math.exp(-1), True),  # no delta known yet: the window decides
        (-1, 1_000, 10_000, 1.0, 1e-9, False),  # no expiry: never due
    ],
)
def test_the_decision_with_a_fixed_random_number(pttl, delta, window, beta, rand, due):
    assert refresh_due(pttl, delta, window, beta, rand) is due


def _run_read(redis: Any, n: int, pttl: int, delta: int, window: int, xf: float) -> int:
    value, lease, meta = f"cpt:{{t:decide:{n}}}", f"cpt:{{t:decide:{n}}}:l", f"cpt:{{t:decide:{n}}}:m"
    redis.set(value, b"payload", px=pttl)
    redis.set(meta, str(delta), px=pttl)
    reply = get_store().script("ra_read", (value, lease, meta), ("tok", 10_000, window, xf, "r:tok", ""))
    return int(reply[0])


def test_the_lua_read_decides_as_refresh_due(redis):
    # Lifetimes of ten minutes and thresholds at least a minute away from them: the
    # seconds a busy machine takes between the SET and the read cannot flip an answer.
    pttl = 600_000
    n = 0
    for window in (0, 60_000, 700_000):
        for delta in (0, 1_000, 100_000):
            for beta in (0.0, 1.0, 10.0):
                for rand in (1.0, 0.5, 0.01):
                    gap = xfetch_gap_ms(delta, beta, rand)
                    if abs(gap - pttl) < 60_000 or abs(window - pttl) < 60_000:
                        continue
                    n += 1
                    xf = xfetch_factor(beta, rand)
                    state = _run_read(redis, n, pttl, delta, window, xf)
                    expected = refresh_due(pttl, delta, window, beta, rand)
                    assert state == (4 if expected else 1), (window, delta, beta, rand)
    assert n > 50


def test_backoff_grows_from_a_sixteenth_to_half_of_the_window():
    assert backoff_ms(12_000) == (750, 6_000)
    assert backoff_ms(400) == (100, 200)  # at least 100 ms
    assert backoff_ms(0) == (100, 100)


def test_each_failure_doubles_the_backoff_up_to_its_cap(redis):
    value, lease, meta = "cpt:{t:fail}", "cpt:{t:fail}:l", "cpt:{t:fail}:m"
    redis.set(value, b"old", px=600_000)
    redis.set(meta, "12", px=600_000)
    store = get_store()
    backoffs = []
    for _ in range(5):
        redis.set(lease, "r:tok", px=10_000)  # a refresh holds the lease, and its loader fails
        backoffs.append(store.script("ra_fail", (value, lease, meta), ("r:tok", 750, 6_000, "")))
        assert redis.get(lease).startswith(b"b:")  # readers are held off until it expires
        assert 0 < redis.pttl(lease) <= backoffs[-1]
    assert backoffs == [750, 1_500, 3_000, 6_000, 6_000]
    assert redis.get(meta) == b"12,5"  # the compute time kept, the failures counted
    assert redis.get(value) == b"old"  # stale-if-error
    assert 0 < redis.pttl(meta) <= 600_000  # the count expires with the value
    # A failure whose lease was taken meanwhile (a write, a reader) changes nothing.
    redis.set(lease, "someone-else", px=10_000)
    assert store.script("ra_fail", (value, lease, meta), ("r:tok", 750, 6_000, "")) == -1
    assert redis.get(lease) == b"someone-else"


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_with_beta_a_larger_compute_time_refreshes_earlier(celery_worker, redis, counts, monkeypatch):
    label = "ra:xfetched:{item}"
    slow, fast = keys_of(xfetched, item="slow"), keys_of(xfetched, item="fast")
    for item, keys in (("slow", slow), ("fast", fast)):
        assert xfetched(item)["n"] >= 1
        wait_filled(redis, keys)
        # Both have five minutes left (far outside the 6 s window); only their compute time differs.
        redis.pexpire(keys.value, 300_000)
    redis.set(slow.meta, "400000", keepttl=True)  # 400 s to compute
    redis.set(fast.meta, "10", keepttl=True)  # 10 ms
    monkeypatch.setattr(policy, "_random", lambda: 1 - math.exp(-1))  # -ln(rand) = 1: gap = delta * beta

    assert xfetched("fast")["n"] >= 1
    worker.drain()
    assert counts(label).get("refresh_scheduled", 0) == 0  # 10 ms ahead of expiry: not yet
    assert xfetched("slow")["n"] >= 1
    worker.drain()
    assert counts(label)["refresh_scheduled"] == 1  # 400 s ahead of a 300 s expiry: now
    assert worker_count(label, "refresh_done") == 1
    assert wait_until(lambda: redis.pttl(slow.value) > 300_000)  # refreshed: a fresh ten minutes
    assert redis.pttl(fast.value) <= 300_000  # untouched
    assert calls(redis, "xfetched") == 3


# -- what is refused, and where ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [("a", "b"), ["a"], {"a": 1}, decimal.Decimal("1.5"), datetime.date(2026, 1, 1), float("nan"), b"x"],
    ids=repr,
)
def test_arguments_that_json_would_not_bring_back_raise_at_the_call(bad, redis):
    with pytest.raises(TypeError, match=r"parameter 'item' is .*str, int, float, bool or None"):
        wide(bad)
    assert calls(redis, "wide") == 0  # refused before anything ran


@pytest.mark.django_db
def test_an_instance_argument_is_refused_with_a_hint(redis):
    from tests.refreshapp.models import Headline

    with pytest.raises(TypeError, match="pass a primary key instead of an instance"):
        wide(Headline(pk=1, owner=1, title="x"))


def test_a_default_json_would_not_bring_back_raises_at_decoration():
    with pytest.raises(TypeError, match=r"parameter 'day' is date"):

        @refresh_ahead(ttl=60)
        def on(day: datetime.date = datetime.date(2026, 1, 1)) -> str:
            return str(day)


@pytest.mark.django_db
def test_a_loader_that_times_out_is_a_failure_that_keeps_the_old_value(redis, monkeypatch, counts):
    from celery.exceptions import SoftTimeLimitExceeded

    from cachepatterns_app.patterns.refresh_ahead import refresh_function, worker

    scheduled: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "schedule", lambda task, kwargs, label, using: scheduled.append(kwargs))
    slow = {"fail": False}

    @refresh_ahead(key="ra:timing:{item}", ttl=60, name="tests.timing")
    def timing(item: str) -> str:
        if slow["fail"]:
            raise SoftTimeLimitExceeded  # what Celery raises in a task past its soft time limit
        return "fresh"

    keys = keys_of(timing, item="x")
    assert timing("x") == "fresh"
    wait_filled(redis, keys)
    old = redis.get(keys.value)
    redis.pexpire(keys.value, 5_000)
    assert timing("x") == "fresh"
    slow["fail"] = True
    assert refresh_function(**scheduled[0]) == "failed"
    assert redis.get(keys.value) == old  # stale-if-error
    assert redis.get(keys.lease) == b"b:1"  # and a backoff before the next try
    assert counts("ra:timing:{item}")["refresh_failed"] == 1


def test_declarations_a_worker_could_not_run_are_refused():
    class Thing:
        @staticmethod
        def ok(item: str) -> str:
            return item

    with pytest.raises(ConfigurationError, match="methods cannot be refreshed"):

        class Other:
            @refresh_ahead(ttl=60)
            def method(self, item: str) -> str:
                return item

    with pytest.raises(ConfigurationError, match="positional-only"):

        @refresh_ahead(ttl=60)
        def positional(item: str, /) -> str:
            return item

    with pytest.raises(ConfigurationError, match="ttl=None never expires"):

        @refresh_ahead(ttl=None)
        def forever(item: str) -> str:
            return item

    for factor in (0, 1, 1.5, "0.2", True):
        with pytest.raises(ConfigurationError, match="factor"):

            @refresh_ahead(ttl=60, factor=factor)
            def badly(item: str) -> str:
                return item

    for beta in (-1, float("inf"), "1"):
        with pytest.raises(ConfigurationError, match="beta"):

            @refresh_ahead(ttl=60, beta=beta)
            def worse(item: str) -> str:
                return item

    with pytest.raises(ConfigurationError, match="without parentheses"):
        refresh_ahead(Thing.ok)  # type: ignore[arg-type]


def test_the_manager_checks_its_refresh_ahead_fraction():
    for bad in (0, 1, 2, "0.2", True):
        with pytest.raises(ConfigurationError, match=r"refresh_ahead"):
            CacheAsideManager(ttl=60, refresh_ahead=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="never expire"):
        CacheAsideManager(ttl=None, refresh_ahead=0.2)
    manager = CacheAsideManager(ttl=60, refresh_ahead=0.2)
    assert manager.deconstruct()[4] == {"ttl": 60, "refresh_ahead": 0.2}


def test_defaults_come_from_the_settings():
    from tests.support import cachepatterns

    fn = wide.cached  # type: ignore[attr-defined]
    assert fn.policy.factor == 0.2  # its own
    with cachepatterns(REFRESH_AHEAD={"FACTOR": 0.5, "XFETCH_BETA": 2.0}):

        @refresh_ahead(ttl=100)
        def defaulted(item: str) -> str:
            return item

        state = defaulted.cached  # type: ignore[attr-defined]
        assert state.policy.factor == 0.5
        assert state.policy.beta == 2.0
        assert state.policy.window_ms(100) == 50_000
