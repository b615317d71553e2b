"""``CacheAsideManager(refresh_ahead=…)``: hot rows reloaded in the background, never older than a write."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import models

from cachepatterns_app.keys import meta_key
from cachepatterns_app.patterns.refresh_ahead import refresh_row, worker
from cachepatterns_app.patterns.refresh_ahead.rows import RefreshAheadRowCache
from cachepatterns_app.registry import row_cache_for
from tests.ra_support import shared_counts, worker_count
from tests.refreshapp.models import Headline
from tests.support import HeldReader, keys_of, sqlite_wal, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "refreshapp.headline"


def cached_row(redis: Any, headline: Headline) -> Any:
    keys = keys_of(Headline, headline.pk)
    assert Headline.objects.get(pk=headline.pk).title == headline.title  # the miss fills
    assert wait_until(lambda: redis.exists(keys.value)), "the fill never landed"
    return keys


def test_the_manager_puts_a_refresh_ahead_row_cache_in_front_of_the_model():
    cache = row_cache_for(Headline)
    assert isinstance(cache, RefreshAheadRowCache)
    assert cache.policy.window_ms(cache.ttl) == 12_000


@pytest.mark.worker
def test_a_hot_row_near_expiry_is_reloaded_in_the_background(
    celery_worker, redis, counts, django_assert_num_queries
):
    headline = Headline.objects.create(owner=1, title="before")
    keys = cached_row(redis, headline)
    # Changed behind the cache's back: only a reload from the database can show it.
    models.QuerySet(Headline).filter(pk=headline.pk).update(title="reloaded")
    assert redis.pexpire(keys.value, 5_000)  # inside the last fifth of the 60 s TTL

    with django_assert_num_queries(0):
        assert Headline.objects.get(pk=headline.pk).title == "before"  # served at once
    worker.drain()
    assert counts(LABEL)["refresh_scheduled"] == 1
    assert worker_count(LABEL, "refresh_done") == 1
    with django_assert_num_queries(0):
        assert Headline.objects.get(pk=headline.pk).title == "reloaded"  # a hit, refreshed
    assert redis.pttl(keys.value) > 12_000
    assert counts(LABEL)["miss"] == 1


def test_a_write_while_a_row_is_reloaded_wins(redis, monkeypatch):
    scheduled: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "schedule", lambda task, kwargs, label, using: scheduled.append(kwargs))
    headline = Headline.objects.create(owner=1, title="old")
    keys = cached_row(redis, headline)
    assert redis.pexpire(keys.value, 5_000)
    assert Headline.objects.get(pk=headline.pk).title == "old"
    (kwargs,) = scheduled

    with sqlite_wal():
        # The worker's reload, held right after its SELECT returned the old row.
        held = HeldReader(lambda: refresh_row(**kwargs), "refreshapp_headline")
        held.start()
        headline.title = "new"
        headline.save()  # commits, then deletes the row's keys: the reload's lease too
        assert held.release() == "skipped"

    assert not redis.exists(keys.value)  # the old row it loaded was not stored
    assert shared_counts(LABEL)["refresh_skipped"] == 1
    assert Headline.objects.get(pk=headline.pk).title == "new"


def test_a_row_deleted_before_its_reload_is_skipped(redis, monkeypatch):
    scheduled: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "schedule", lambda task, kwargs, label, using: scheduled.append(kwargs))
    headline = Headline.objects.create(owner=1, title="doomed")
    keys = cached_row(redis, headline)
    assert redis.pexpire(keys.value, 5_000)
    Headline.objects.get(pk=headline.pk)
    (kwargs,) = scheduled
    models.QuerySet(Headline).filter(pk=headline.pk).delete()  # behind the cache: the lease stays
    assert refresh_row(**kwargs) == "skipped"
    assert not redis.exists(keys.lease)  # given back


def test_an_invalidation_drops_the_rows_refresh_state_too(redis):
    headline = Headline.objects.create(owner=1, title="t")
    keys = cached_row(redis, headline)
    redis.set(meta_key(keys.value), "5,3", px=60_000)  # three failed reloads so far
    headline.title = "u"
    headline.save()
    assert not redis.exists(keys.value, keys.lease, meta_key(keys.value))


def test_malformed_row_messages_are_refused(caplog):
    assert refresh_row("refreshapp.nothing", 1, "default", "r:x") == "failed"
    assert refresh_row("testapp.author", 1, "default", "r:x") == "failed"  # not refresh-ahead
    assert refresh_row(LABEL, "not-a-pk", "default", "r:x") == "failed"
    assert refresh_row(LABEL, 1, "default", "forged") == "failed"
    assert "is not a model with CacheAsideManager(refresh_ahead=...)" in caplog.text
