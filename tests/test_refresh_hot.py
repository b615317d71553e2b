"""
The hot set: sampled reads counted in a capped sorted set, and the periodic task
that refreshes the hottest keys before they expire.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import hot_keys_key
from cachepatterns_app.patterns.refresh_ahead import policy, refresh_hot_keys, worker
from cachepatterns_app.patterns.refresh_ahead.hot import horizon_ms
from tests.ra_support import calls, keys_of, wait_filled, worker_count
from tests.refreshapp.models import Headline
from tests.refreshapp.refreshers import wide
from tests.support import keys_of as row_keys_of
from tests.support import settle, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def hot_key() -> str:
    return hot_keys_key(database_identity("default"))


@pytest.fixture
def every_read(monkeypatch):
    """Count every read in the hot set instead of a sample."""
    monkeypatch.setattr(policy, "HOT_SAMPLE", 1.0)


def member(*parts: Any) -> str:
    return json.dumps(list(parts), separators=(",", ":"), sort_keys=True)


def test_sampled_reads_are_counted_by_function_and_arguments(redis, every_read):
    wide("a")
    settle()  # the fill landed: the next read is one read, not a wait that reads again
    wide("a")
    wide("b")
    name = "tests.refreshapp.refreshers.wide"
    assert redis.zscore(hot_key(), member("f", name, {"item": "a"})) == 2  # the miss counts too
    assert redis.zscore(hot_key(), member("f", name, {"item": "b"})) == 1


def test_rows_are_counted_by_model_and_primary_key(redis, every_read):
    headline = Headline.objects.create(owner=1, title="t")
    Headline.objects.get(pk=headline.pk)
    assert wait_until(lambda: redis.exists(row_keys_of(Headline, headline.pk).value))
    Headline.objects.get(pk=headline.pk)
    assert redis.zscore(hot_key(), member("r", "refreshapp.headline", headline.pk)) == 2


def test_the_hot_set_never_holds_more_than_its_capacity_and_a_tenth(redis, every_read, monkeypatch):
    monkeypatch.setattr(policy, "HOT_CAPACITY", 10)
    for _ in range(3):
        wide("favourite")
    for i in range(60):
        wide(f"once-{i}")
        assert redis.zcard(hot_key()) <= 11
    name = "tests.refreshapp.refreshers.wide"
    assert redis.zscore(hot_key(), member("f", name, {"item": "favourite"})) == 3  # the hottest stays


def test_long_arguments_are_not_counted(redis, every_read):
    wide("x" * 600)
    assert redis.zcard(hot_key()) == 0


def test_the_horizon_is_the_window_or_the_time_to_the_next_run():
    assert horizon_ms(12_000, 60, 10.0) == 12_000  # the window is longer than the interval
    assert horizon_ms(12_000, 60, 40.0) == 30_000  # next run in 40 s: at most half the TTL
    assert horizon_ms(720_000, 3600, 10.0) == 720_000


@pytest.mark.worker
def test_the_task_refreshes_a_hot_key_that_no_read_brought_into_its_window(
    celery_worker, redis, every_read, counts
):
    from cachepatterns_app.tasks import refresh_hot_keys as task

    keys = keys_of(wide, item="hot")
    assert wide("hot")["n"] == 1
    wait_filled(redis, keys)
    assert wide("hot")["n"] == 1  # a hit, counted
    assert redis.pexpire(keys.value, 20_000)  # outside the 12 s window, inside the 30 s horizon
    assert wide("hot")["n"] == 1
    assert counts("ra:wide:{item}").get("refresh_scheduled", 0) == 0  # no read scheduled one
    other = keys_of(wide, item="cool")
    wide("cool")
    wait_filled(redis, other)  # hot too, but 60 s from expiry: left alone

    assert task.apply_async(kwargs={"interval": 40.0}, queue=celery_worker.queue).get(timeout=30) == 1
    assert worker_count("ra:wide:{item}", "refresh_done") == 1
    assert wait_until(lambda: redis.pttl(keys.value) > 30_000)
    assert calls(redis, "wide") == 3  # two misses and the one refresh
    name = "tests.refreshapp.refreshers.wide"
    assert redis.zscore(hot_key(), member("f", name, {"item": "hot"})) == 1.5  # faded: halved


@pytest.mark.worker
def test_the_task_refreshes_hot_rows(celery_worker, redis, every_read):
    headline = Headline.objects.create(owner=1, title="t")
    keys = row_keys_of(Headline, headline.pk)
    Headline.objects.get(pk=headline.pk)
    assert wait_until(lambda: redis.exists(keys.value))
    Headline.objects.get(pk=headline.pk)
    assert redis.pexpire(keys.value, 20_000)
    from cachepatterns_app.tasks import refresh_hot_keys as task

    assert task.apply_async(kwargs={"interval": 40.0}, queue=celery_worker.queue).get(timeout=30) == 1
    assert worker_count("refreshapp.headline", "refresh_done") == 1
    assert redis.pttl(keys.value) > 30_000


def test_members_it_cannot_use_are_ignored_and_fade(redis, monkeypatch):
    scheduled: list[Any] = []
    monkeypatch.setattr(worker, "schedule", lambda *args: scheduled.append(args))
    redis.zadd(hot_key(), {"not json": 1, member("f", "gone.function", {}): 1, member("r", "no.model", 1): 1})
    redis.zadd(hot_key(), {member("x", "y", "z"): 0.08})
    assert refresh_hot_keys(10.0) == 0
    assert scheduled == []
    assert redis.zcard(hot_key()) == 3  # the 0.04 one dropped
    for _ in range(5):
        refresh_hot_keys(10.0)
    assert redis.zcard(hot_key()) == 0  # every member faded below 1/20
