"""
A flush inside a transaction of the caller's (``objects.flushed()`` in a view under
``ATOMIC_REQUESTS``, or in a ``TestCase``): the rows are written in that transaction,
the queue entries are read without being delivered to anyone and acknowledged when it
commits. Reviews found, in turn: the entries acknowledged (and deleted) at once, so a
view that flushed and then failed lost the writes with its rollback; then, acknowledged
at the commit but delivered, a rollback left them stranded until ``RECLAIM_IDLE``, and a
second flush in the transaction applied them twice; a transient error reconnected and
silently rolled back the caller's own writes; and at REPEATABLE READ the flush could not
see what was committed after the transaction's snapshot.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError, connection, models, transaction

from cachepatterns_app import flush_write_behind
from cachepatterns_app.exceptions import WriteBehindError
from cachepatterns_app.patterns.write_behind import flush as flush_module
from cachepatterns_app.patterns.write_behind.flush import flush_model
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


def test_a_flush_in_a_transaction_that_rolls_back_leaves_the_writes_queued_for_the_next_flush():
    row = queued_row()
    queue = row_cache_for(Counter).queue("default")

    def view() -> None:
        with transaction.atomic():
            assert flush_write_behind(Counter) == 1
            assert models.QuerySet(Counter).get(pk=row.pk).name == "queued"  # the caller reads it
            raise RuntimeError("the view fails after its query")

    with pytest.raises(RuntimeError):
        view()
    assert models.QuerySet(Counter).get(pk=row.pk).name == "first"
    assert queue.length() == 1  # still queued, and delivered to no one:
    assert queue.pending_summary() == (0, 0)
    assert flush_write_behind(Counter) == 1  # the next request's flushed() applies it at once
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


def test_two_flushes_in_one_transaction_apply_and_count_an_entry_once():
    queued_row()
    cache = row_cache_for(Counter)
    with transaction.atomic():
        first = flush_model(cache, "default")
        again = flush_model(cache, "default", drain=True)
    assert (first.entries, again.entries, again.stale) == (1, 0, 0), (first, again)
    assert cache.queue("default").length() == 0


def test_a_transient_error_in_the_callers_transaction_is_raised_not_retried(monkeypatch):
    """A retry reconnects, which ended the caller's transaction silently: its writes were lost."""
    queued_row()
    cache = row_cache_for(Counter)
    real_commit = flush_module._commit
    calls: list[int] = []

    def deadlock_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError(1213, "Deadlock found when trying to get lock")
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(flush_module, "_commit", deadlock_once)

    def view() -> None:
        with transaction.atomic():
            models.QuerySet(Counter).create(name="the view's own write")
            flush_model(cache, "default")

    with pytest.raises(OperationalError, match="Deadlock"):
        view()
    assert calls == [1]
    assert cache.queue("default").length() == 1


@pytest.mark.skipif(connection.vendor == "sqlite", reason="one isolation level")
def test_a_flush_in_a_repeatable_read_transaction_is_refused(monkeypatch):
    queued_row()
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        level: Any = IsolationLevel.REPEATABLE_READ
    else:
        level = "repeatable read"
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "isolation_level", level)
    connection.close()
    try:
        with pytest.raises(WriteBehindError, match="REPEATABLE READ"), transaction.atomic():
            flush_write_behind(Counter)
    finally:
        connection.close()
    assert row_cache_for(Counter).queue("default").length() == 1
