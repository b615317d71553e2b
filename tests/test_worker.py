"""Writes done in a real Celery worker process invalidate what other processes read."""

from __future__ import annotations

import pytest
from django.db import models

from tests.testapp.models import Author
from tests.testapp.tasks import read_author, rename_author

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_save_in_worker_invalidates_cache_read_here(celery_worker, django_assert_num_queries, redis):
    author = Author.objects.create(name="before", email="w@example.org")
    assert Author.objects.get(pk=author.pk).name == "before"
    _wait_cached(redis, author.pk)
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=author.pk).name == "before"

    result = rename_author.apply_async((author.pk, "after"), queue=celery_worker.queue).get(timeout=30)

    assert result == "after"
    # The worker invalidated after its commit, so this process misses and reads the new row.
    with django_assert_num_queries(1):
        assert Author.objects.get(pk=author.pk).name == "after"


def test_worker_reads_through_the_shared_cache(celery_worker, redis):
    author = Author.objects.create(name="shared", email="s@example.org")
    Author.objects.get(pk=author.pk)
    _wait_cached(redis, author.pk)
    # Change the row behind the cache's back: a hit in the worker proves it read Redis.
    models.QuerySet(Author).filter(pk=author.pk).update(name="changed-in-db")
    assert read_author.apply_async((author.pk,), queue=celery_worker.queue).get(timeout=30) == "shared"


def _wait_cached(redis, pk):
    from tests.support import row_keys, wait_until

    assert wait_until(lambda: redis.exists(row_keys("testapp.author", pk).value)), "fill never landed"
