"""
A flush inside a transaction of the caller's (``objects.flushed()`` in a view under
``ATOMIC_REQUESTS``): its writes are the caller's until that commits, so the queue
entries are acknowledged at that commit, not before. A review found them acknowledged
(and deleted from the stream) at once: a view that flushed and then failed rolled the
rows back and lost the queued writes with them.
"""

from __future__ import annotations

import pytest
from django.db import models, transaction

from cachepatterns_app import flush_write_behind
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def queued_row() -> Counter:
    row = Counter(name="first", views=1)
    row.save(sync=True)
    queued = Counter.objects.get(pk=row.pk)
    queued.name = "queued"
    queued.save()
    return row


def test_a_flush_in_a_transaction_that_rolls_back_keeps_the_writes_queued():
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from cachepatterns_app.patterns.write_behind.queue import consumer_name

    row = queued_row()
    cache = row_cache_for(Counter)
    queue = cache.queue("default")

    def view() -> None:
        with transaction.atomic():
            assert flush_write_behind(Counter) == 1
            assert models.QuerySet(Counter).get(pk=row.pk).name == "queued"  # the caller reads it
            raise RuntimeError("the view fails after its query")

    with pytest.raises(RuntimeError):
        view()
    assert models.QuerySet(Counter).get(pk=row.pk).name == "first"
    assert queue.length() == 1  # still queued
    # Delivered to this process and not acknowledged: its own next flush (a drain here;
    # another worker's after RECLAIM_IDLE) applies it.
    flush_model(cache, "default", consumer=consumer_name(), drain=True)
    assert models.QuerySet(Counter).get(pk=row.pk).name == "queued"
    assert queue.length() == 0


def test_a_flush_in_a_transaction_that_commits_acknowledges_at_the_commit():
    row = queued_row()
    queue = row_cache_for(Counter).queue("default")
    with transaction.atomic():
        assert flush_write_behind(Counter) == 1
        assert queue.length() == 1  # not acknowledged before the caller's commit
    assert queue.length() == 0
    assert models.QuerySet(Counter).get(pk=row.pk).name == "queued"
    assert Counter.objects.get(pk=row.pk).name == "queued"
