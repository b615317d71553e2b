"""
MariaDB-level faults during a write-behind flush, on this test's own connections and
rows: a row lock held by another transaction makes the flush's write fail with a lock
wait timeout (1205), and another transaction closes a lock cycle with the flush's so
that InnoDB rolls the flush back as a deadlock (1213). The locks are held until the
test releases them, and each step waits for the lock wait it needs to be visible in
the server, so the errors do not depend on the machine's speed; only the flush's own
sessions get a short ``innodb_lock_wait_timeout`` (never the server's global setting,
which others share).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, models
from django.db.backends.signals import connection_created

from cachepatterns_app import flush_write_behind
from cachepatterns_app.patterns.write_behind.flush import TRANSIENT_ATTEMPTS, flush_model
from cachepatterns_app.registry import row_cache_for
from tests.support import MYSQL, PATIENCE, Worker, flush_until_drained, wait_until
from tests.testapp.models import Counter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not MYSQL, reason="InnoDB row locks, errors 1205 and 1213: MySQL/MariaDB only"),
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
    flush_until_drained(cache)
    assert totals() == {c.pk: 7 for c in counters}
    assert cache.queue("default").length() == 0
    record(lock_wait_errors=len(waits), left_queued=blocked.left, after_release="5 rows at +7")


def deadlocks(cursor: Any) -> int:
    cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
    return int(cursor.fetchone()[1])


def lock_wait_of(cursor: Any, thread_id: int) -> str:
    """
    Return the InnoDB status of session ``thread_id``'s transaction if it waits for a row
    lock of testapp_counter while holding another one, else "". (MariaDB's
    information_schema.INNODB_TRX does not list a transaction that has only taken
    locking reads; the InnoDB monitor does.)
    """
    cursor.execute("SHOW ENGINE INNODB STATUS")
    status = cursor.fetchone()[2]
    for block in status.split("---TRANSACTION ")[1:]:
        if f"MariaDB thread id {thread_id}," not in block or "LOCK WAIT" not in block:
            continue
        held = re.search(r"LOCK WAIT \d+ lock struct\(s\), heap size \d+, (\d+) row lock\(s\)", block)
        waiting_in = re.search(r"WAITING .* FOR THIS LOCK TO BE GRANTED:\n.*testapp_counter", block)
        if held and int(held.group(1)) >= 2 and waiting_in:
            return block
    return ""


def test_a_deadlock_during_a_flush_is_retried_and_applies_the_batch_once(caplog, record):
    """
    Fault: a real InnoDB deadlock (1213) with the flush's transaction: another MariaDB
    transaction updates row B (and 20 rows outside the batch, so InnoDB picks the flush, the
    lighter transaction, as the victim); the flush's SELECT … FOR UPDATE locks row A and waits
    for B; then the other transaction asks for A.
    Expected: InnoDB detects the deadlock and rolls the flush back; the flush logs the 1213,
    retries (once the other transaction ends), applies the batch exactly once and acknowledges
    it; the other transaction's changes roll back; the queue ends empty.
    Observed: Innodb_deadlocks up by at least one, one 1213 warning from the flush, the other
    transaction's lock request granted; after it rolled back the flush's retry committed: rows
    A and B at exactly +7, the 20 other rows untouched, the queue empty.
    """
    cache = row_cache_for(Counter)
    queue = cache.queue("default")
    batch = [Counter(name=f"batch{i}") for i in range(2)]
    others = [Counter(name=f"other{i}") for i in range(20)]
    for counter in [*batch, *others]:
        counter.save()
    flush_write_behind(Counter)
    for counter in batch:
        Counter.objects.incr(counter.pk, "views", 7)
    # The order InnoDB locks the batch's rows in: the primary key's, as the database sorts it.
    first, second = models.QuerySet(Counter).filter(pk__in=[c.pk for c in batch]).order_by("pk")

    holder = connections.create_connection("default")
    holder.inc_thread_sharing()
    observer = connections.create_connection("default")
    flusher = None
    try:
        with observer.cursor() as look:
            before = deadlocks(look)
        with holder.cursor() as cursor:
            cursor.execute("START TRANSACTION")
            cursor.execute(
                "UPDATE testapp_counter SET likes = likes + 1 WHERE id IN %s",
                [tuple(c.pk.hex for c in [second, *others])],
            )
            assert cursor.rowcount == 21
        with caplog.at_level(logging.WARNING, "cachepatterns_app"):
            flush_ids: list[int] = []

            def flush() -> Any:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT CONNECTION_ID()")
                    flush_ids.append(int(cursor.fetchone()[0]))
                return flush_model(cache, "default")

            flusher = Worker(flush, name="flusher")
            flusher.start()
            assert wait_until(lambda: flush_ids), "the flush never connected"
            (flush_id,) = flush_ids
            with observer.cursor() as look:
                # The flush holds A and waits for B: the lock wait the deadlock closes.
                assert wait_until(lambda: lock_wait_of(look, flush_id)), "the flush never waited for B"

            def ask_for_first() -> Any:
                with holder.cursor() as cursor:
                    cursor.execute("SELECT id FROM testapp_counter WHERE id = %s FOR UPDATE", [first.pk.hex])
                    return cursor.fetchall()

            # Granted once InnoDB rolled the flush back (were the holder the victim, this raises 1213).
            asking = Worker(ask_for_first, name="holder")
            asking.start()
            assert len(asking.result()) == 1
            with observer.cursor() as look:
                after_deadlock = deadlocks(look)
            with holder.cursor() as cursor:
                cursor.execute("ROLLBACK")
            result = flusher.result()
    finally:
        with holder.cursor() as cursor:
            cursor.execute("ROLLBACK")
        holder.dec_thread_sharing()
        holder.close()
        observer.close()
        if flusher is not None:
            flusher.join(PATIENCE)
    found = [r.getMessage() for r in caplog.records if "1213" in r.getMessage()]
    assert after_deadlock >= before + 1
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    assert "attempt 1 of" in found[0]
    assert (result.rows, result.entries, result.left, result.stale) == (2, 2, 0, 0)
    assert totals() == {**{c.pk: 7 for c in batch}, **{c.pk: 0 for c in others}}
    assert dict(models.QuerySet(Counter).values_list("pk", "likes")) == {c.pk: 0 for c in [*batch, *others]}
    assert queue.length() == 0
    record(
        innodb_deadlocks_counted=after_deadlock - before, deadlock_warnings=len(found), batch_rows="2 at +7"
    )
