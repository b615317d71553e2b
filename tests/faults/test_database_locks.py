"""
MariaDB-level faults during a write-behind flush, on this test's own connections and
rows: a row lock held by another transaction makes the flush's write fail with a lock
wait timeout (1205). The lock is held until the test releases it, so the error does
not depend on the machine's speed; only the flush's own sessions get a short
``innodb_lock_wait_timeout`` (never the server's global setting, which others share).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, models
from django.db.backends.signals import connection_created

from cachepatterns_app import flush_write_behind
from cachepatterns_app.patterns.write_behind.flush import TRANSIENT_ATTEMPTS, flush_model
from cachepatterns_app.registry import row_cache_for
from tests.support import MYSQL, cachepatterns, wait_until
from tests.testapp.models import Counter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not MYSQL, reason="InnoDB row locks and error 1205: MySQL/MariaDB only"),
]


def short_lock_wait(sender: Any, connection: Any, **kwargs: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")


@pytest.fixture
def impatient() -> Iterator[None]:
    """Every session of the flush (the current one, and any it reconnects) waits 1 s for a lock."""
    connection_created.connect(short_lock_wait)
    connection.ensure_connection()
    short_lock_wait(None, connection)
    try:
        yield
    finally:
        connection_created.disconnect(short_lock_wait)
        connection.close()


def totals() -> dict[Any, int]:
    return dict(models.QuerySet(Counter).values_list("pk", "views"))


def test_a_lock_wait_timeout_during_a_flush_keeps_the_writes_queued(impatient, caplog, record):
    """
    Fault: another MariaDB transaction holds a row lock (SELECT … FOR UPDATE) on one of five
    rows while the flush writes them, so each attempt fails with 1205 lock wait timeout.
    Expected: the flush retries its transient attempts, then leaves all five writes queued
    (none acknowledged, none applied: the batch is one transaction); once the lock is released
    the flushes that reclaim them (after RECLAIM_IDLE) apply each write exactly once.
    Observed: one 1205 warning per attempt, the five entries left queued, the database
    unchanged during the lock; after release every row exactly +7, the queue empty.
    """
    cache = row_cache_for(Counter)
    counters = [Counter(name=f"c{i}") for i in range(5)]
    for counter in counters:
        counter.save()
    flush_write_behind(Counter)
    for counter in counters:
        Counter.objects.incr(counter.pk, "views", 7)
    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("START TRANSACTION")
            cursor.execute("SELECT id FROM testapp_counter WHERE id = %s FOR UPDATE", [counters[2].pk.hex])
            assert cursor.fetchall()
        with caplog.at_level(logging.WARNING, "cachepatterns_app"):
            blocked = flush_model(cache, "default")
        waits = [r for r in caplog.records if "1205" in r.getMessage()]
        during = totals()
        queued = cache.queue("default").length()
    finally:
        with holder.cursor() as cursor:
            cursor.execute("ROLLBACK")
        holder.close()
    assert len(waits) == TRANSIENT_ATTEMPTS, [r.getMessage() for r in caplog.records]
    assert blocked.left == 5
    assert blocked.entries == 0
    assert during == {c.pk: 0 for c in counters}
    assert queued == 5

    # The entries stay in this consumer's pending list until they have been idle for
    # RECLAIM_IDLE (then any flush reclaims them): a short one, and flush until done.
    from django.conf import settings

    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "RECLAIM_IDLE": 0.2}
    with cachepatterns(WRITE_BEHIND=wb):
        assert wait_until(lambda: flush_model(cache, "default") and cache.queue("default").length() == 0)
    assert totals() == {c.pk: 7 for c in counters}
    assert cache.queue("default").length() == 0
    record(lock_wait_errors=len(waits), left_queued=blocked.left, after_release="5 rows at +7")
