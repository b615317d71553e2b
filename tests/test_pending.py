"""Invalidations that could not reach Redis are recorded durably and sent from any process."""

from __future__ import annotations

import pytest
from django.test import override_settings

from cachepatterns_app import invalidation, pending, store
from cachepatterns_app.models import PendingInvalidation
from tests.support import keys_of, settle
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

DOWN = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
    }
}


def _fill(redis, author):
    Author.objects.get(pk=author.pk)
    settle()
    assert redis.exists(keys_of(Author, author.pk).value)


def _save_while_redis_is_down(author, name):
    with override_settings(CACHES=DOWN):
        author.name = name
        author.save()
    # Forget this process's in-memory queue: as if the process that failed had died.
    with invalidation._failed_lock:
        invalidation._failed.clear()
    store.reset()


def test_a_failed_invalidation_is_recorded_in_the_database(redis):
    author = Author.objects.create(name="before", email="p1@example.org")
    _fill(redis, author)
    _save_while_redis_is_down(author, "after")

    recorded = pending.load()
    assert [command[:2] for command in recorded] == [("DEL", keys_of(Author, author.pk).value)]
    # The stale row is still in Redis: nothing has sent the invalidation yet.
    assert redis.exists(keys_of(Author, author.pk).value)


def test_retry_sends_recorded_invalidations_and_forgets_them(redis):
    author = Author.objects.create(name="before", email="p2@example.org")
    _fill(redis, author)
    _save_while_redis_is_down(author, "after")

    assert invalidation.retry_failed() == 0

    assert not redis.exists(keys_of(Author, author.pk).value)
    assert not PendingInvalidation.objects.exists()
    assert Author.objects.get(pk=author.pk).name == "after"


@pytest.mark.worker
def test_the_task_in_another_process_sends_what_this_process_recorded(redis, celery_worker):
    from cachepatterns_app.tasks import retry_invalidations

    author = Author.objects.create(name="before", email="p3@example.org")
    _fill(redis, author)
    _save_while_redis_is_down(author, "after")
    assert PendingInvalidation.objects.count() == 1

    remaining = retry_invalidations.apply_async(queue=celery_worker.queue).get(timeout=30)

    assert remaining == 0
    assert not PendingInvalidation.objects.exists()
    assert Author.objects.get(pk=author.pk).name == "after"


def test_recording_is_deduplicated(redis):
    author = Author.objects.create(name="a", email="p4@example.org")
    with override_settings(CACHES=DOWN):
        for name in ("b", "c", "d"):
            author.name = name
            author.save()
    store.reset()
    assert PendingInvalidation.objects.count() == 1
