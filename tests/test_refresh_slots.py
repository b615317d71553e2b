"""
The refresh-ahead read and its lease: one round trip per hit (the hot-set sample
included), a reader never waits on a background refresh, a lost task heals when
its lease expires, and what Redis holds is not trusted blindly.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import caches

from cachepatterns_app import store as store_module
from cachepatterns_app.patterns.refresh_ahead import policy, worker
from tests.ra_support import calls, keys_of, wait_filled
from tests.refreshapp.refreshers import owner_titles, wide
from tests.support import cachepatterns, private_redis, settle, traffic_to, wait_until

WIDE = "ra:wide:{item}"


@pytest.fixture
def scheduled(monkeypatch):
    """Record refreshes instead of enqueueing them (the worker is not what these tests are about)."""
    out: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "schedule", lambda task, kwargs, label, using: out.append(kwargs))
    return out


@pytest.mark.django_db
def test_a_hit_costs_one_round_trip_even_when_sampled_and_due(scheduled, monkeypatch, settings):
    monkeypatch.setattr(policy, "HOT_SAMPLE", 1.0)
    with private_redis() as server:
        settings.CACHES = server.caches()
        with cachepatterns(STATS=False):
            store_module.reset()
            keys = keys_of(wide, item="trip")
            wide("trip")
            settle()
            wide("trip")  # scripts loaded
            with traffic_to(server.port) as fresh:
                assert wide("trip")["n"] == 1
            server.client.pexpire(keys.value, 5_000)
            with traffic_to(server.port) as due:
                assert wide("trip")["n"] == 1
            assert len(scheduled) == 1
            assert server.client.zcard(next(iter(server.client.scan_iter("cpt:{ra:*")))) == 1
            caches["default"].close()
        store_module.reset()
    # The read and the hot-set increment went out together and came back together.
    assert (fresh.connects, fresh.sends) == (0, 1), fresh
    assert (due.connects, due.sends) == (0, 1), due


@pytest.mark.django_db
def test_a_reader_that_misses_takes_the_lease_over_from_a_refresh(redis, scheduled, counts):
    keys = keys_of(wide, item="gone")
    wide("gone")
    wait_filled(redis, keys)
    redis.pexpire(keys.value, 5_000)
    wide("gone")
    (refresh,) = scheduled
    assert redis.get(keys.lease) == refresh["token"].encode()
    redis.delete(keys.value)  # expired before the worker ran
    assert wide("gone")["n"] == 2  # computed at once: no wait for a background task
    assert "wait" not in counts(WIDE)
    settle()
    from cachepatterns_app.patterns.refresh_ahead import refresh_function

    # The late refresh finds its lease taken over: nothing of it is stored.
    assert refresh_function(**refresh) == "skipped"
    assert calls(redis, "wide") == 2


@pytest.mark.django_db
def test_a_lost_refresh_task_heals_when_its_lease_expires(redis, scheduled):
    keys = keys_of(wide, item="lost")
    with cachepatterns(LOCK_TIMEOUT=0.3):
        wide("lost")
        wait_filled(redis, keys)
        redis.set(keys.meta, "0", keepttl=True)
        redis.pexpire(keys.value, 8_000)
        wide("lost")
        assert len(scheduled) == 1  # ...and the task is lost: never enqueued
        assert 0 < redis.pttl(keys.lease) <= 300
        wide("lost")
        assert len(scheduled) == 1  # held off while the lease lives
        assert wait_until(lambda: not redis.exists(keys.lease))
        wide("lost")
        assert len(scheduled) == 2  # scheduled again once it expired


@pytest.mark.django_db
def test_a_refresh_lease_outlives_twice_the_compute_time(redis, scheduled):
    keys = keys_of(wide, item="slowly")
    wide("slowly")
    wait_filled(redis, keys)
    redis.set(keys.meta, "20000", keepttl=True)  # 20 s to compute
    redis.pexpire(keys.value, 5_000)
    wide("slowly")
    assert 40_000 < redis.pttl(keys.lease) <= 50_000  # LOCK_TIMEOUT (10 s) + 2 x 20 s


@pytest.mark.django_db
def test_keys_of_the_wrong_type_are_repaired_or_ignored(redis, scheduled, counts):
    keys = keys_of(wide, item="odd")
    redis.rpush(keys.value, "not a string")
    assert wide("odd")["n"] == 1  # deleted, then a miss
    assert counts(WIDE)["corrupt"] == 1
    wait_filled(redis, keys)
    redis.delete(keys.meta)
    redis.rpush(keys.meta, "x")
    redis.pexpire(keys.value, 5_000)
    assert wide("odd")["n"] == 1  # a meta key we cannot read counts as no compute time
    assert len(scheduled) == 1


@pytest.mark.django_db(transaction=True)
def test_family_members_refresh_under_the_generation_they_were_read_at(redis, scheduled):
    from cachepatterns_app.patterns.refresh_ahead import refresh_function
    from tests.refreshapp.models import Headline
    from tests.support import family_keys

    Headline.objects.create(owner=3, title="a")
    owner_titles(3)
    family = family_keys("ra:owner:3")
    assert wait_until(lambda: redis.get(family.generation))
    generation = redis.get(family.generation).decode()
    value, _ = family.member(generation, "ra:owner:3:titles")
    assert wait_until(lambda: redis.exists(value))
    redis.pexpire(value, 5_000)
    owner_titles(3)
    (refresh,) = scheduled
    assert refresh["generation"] == generation
    assert refresh_function(**refresh) == "done"
    assert redis.pttl(value) > 12_000
    from cachepatterns_app import stats

    timing = stats.durations()[("ra:owner:{owner}:titles", "refresh")]
    assert sum(timing["buckets"]) == 1  # the refresh's duration, in the admin page's histograms
    assert redis.exists(family.member_meta(generation, "ra:owner:3:titles"))
    # A message without its generation cannot be checked, so it is refused.
    assert refresh_function(**{**refresh, "generation": None}) == "failed"


@pytest.mark.django_db(transaction=True)
def test_outside_transactions_from_inside_one():
    from django.db import connection, transaction

    with transaction.atomic():
        assert connection.in_atomic_block
        assert worker.outside_transactions(lambda: connection.in_atomic_block) is False
        with pytest.raises(ZeroDivisionError):
            worker.outside_transactions(lambda: 1 / 0)


@pytest.mark.django_db(transaction=True)  # outside a transaction: published after the read
def test_a_read_never_waits_for_the_broker(redis, monkeypatch, counts):
    import threading

    stuck = threading.Event()
    released = threading.Event()

    def hung_broker(task: str, kwargs: dict[str, Any], label: str) -> None:
        stuck.set()
        assert released.wait(30)

    monkeypatch.setattr(worker, "publish", hung_broker)
    keys = keys_of(wide, item="broker")
    wide("broker")
    wait_filled(redis, keys)
    redis.pexpire(keys.value, 5_000)
    try:
        assert wide("broker")["n"] == 1  # returned although the publish below hangs
        assert stuck.wait(30)  # the publisher thread is the one waiting
        assert wide("broker")["n"] == 1
    finally:
        released.set()
    worker.drain()


def test_a_refused_publish_is_counted_never_raised(counts):
    from celery import Celery

    from tests.celery_app import app

    broken = Celery("broken", broker="redis://127.0.0.1:1/0", set_as_current=False)
    broken.conf.broker_connection_timeout = 1
    broken.set_current()
    try:
        worker.publish("refresh_key", {"name": "x", "params": {}, "token": "r:t"}, WIDE)
    finally:
        app.set_current()
    assert counts(WIDE)["refresh_failed"] == 1
    assert "refresh_scheduled" not in counts(WIDE)
