"""
The queued create and the queued delete of a row the database never held, read by two
flushes running at the same time (different batches, different workers): issue 10's
"an older state never wins".

Neither flush finds the row, so there is no row lock to order them: the delete's flush
has nothing to delete and records a tombstone, the create's flush looked for tombstones
before that one existed and inserts the row. Without the checks of
``flush._check_new_rows`` both committed, and the database kept a row whose latest
write was its delete (this test failed so before they were written).

The interleaving is driven, not hoped for: one flush is held right after its tombstone
lookup while the other runs until it commits or waits for a lock the held one has (seen
in the server), in both orders. Rows the database holds are safe without this (both
flushes lock them), and so are two creates (the second insert fails on the key).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, connections, models, transaction

from cachepatterns_app.models import WriteBehindTombstone
from cachepatterns_app.patterns.write_behind import flush as flush_module
from cachepatterns_app.patterns.write_behind import sql
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.registry import row_cache_for
from tests.support import PATIENCE, Worker, session_id, wait_until, waits_for_a_lock
from tests.testapp.models import Counter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor not in ("mysql", "postgresql"), reason="two concurrent transactions"
    ),
]


@pytest.mark.parametrize("others", [0, 1], ids=["no-other-tombstone", "another-rows-tombstone"])
@pytest.mark.parametrize("held", ["create", "delete", "delete-after-its-check"])
def test_a_create_and_its_delete_flushed_at_the_same_time_leave_no_row(held, others, settings, monkeypatch):
    """
    ``held``: which flush is held, and where: the create's or the delete's right after its
    tombstone lookup, or the delete's after its own check, its tombstone written and not
    committed (the create's flush must then wait for it: a lookup that does not see an
    uncommitted tombstone would let both commit). ``others``: tombstones of other rows of
    the model, so that the lookups do not stop at the probe for any tombstone of the
    model (``sql._any_tombstone``) but look the keys up.
    """
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "WRITE_BEHIND": {"BATCH_SIZE": 1}}
    # One key per batch: below the probe's threshold, so force it on for this test.
    monkeypatch.setattr(sql, "PROBE_TOMBSTONES_AT", 1)
    for i in range(others):
        WriteBehindTombstone.objects.create(label=row_cache_for(Counter).label, pk_text=f"other-{i}", seq=1)
    row = Counter(name="short-lived")
    row.save()  # queued create
    row.delete()  # queued delete: the database never held the row
    cache = row_cache_for(Counter)
    queue = cache.queue("default")
    assert queue.length() == 2

    looked_up, resume = threading.Event(), threading.Event()
    real_lookup = flush_module.locked_tombstones

    def hold() -> None:
        if threading.current_thread().name == "held" and not looked_up.is_set():
            looked_up.set()
            assert resume.wait(PATIENCE), "the other flush never finished nor waited"

    def lookup(*args: Any, **kwargs: Any) -> dict[str, int]:
        found = real_lookup(*args, **kwargs)
        if held != "delete-after-its-check":
            hold()
        return found

    real_check = flush_module._check_new_rows

    def check(*args: Any, **kwargs: Any) -> None:
        real_check(*args, **kwargs)
        if held == "delete-after-its-check":
            hold()

    monkeypatch.setattr(flush_module, "locked_tombstones", lookup)
    monkeypatch.setattr(flush_module, "_check_new_rows", check)

    def flush_one(consumer: str) -> Any:
        return flush_model(cache, "default", consumer=consumer, max_batches=1)

    sessions: list[int] = []

    def flush_other() -> Any:
        sessions.append(session_id(connections["default"]))
        return flush_one("other-worker")

    # The create is the older entry: the first flush to read the queue gets it.
    first = Worker(lambda: flush_one("first-worker"), name="held" if held == "create" else "first")
    observer = connections.create_connection("default")
    try:
        if held == "create":
            first.start()
            assert looked_up.wait(PATIENCE), "the create's flush never reached its tombstone lookup"
            other = Worker(flush_other, name="other")
            other.start()
        else:
            # The create is read (and held back from the database) by a consumer that
            # waits, so that the held flush reads the delete.
            queue.ensure_group()
            entries = queue.read_new("first-worker", 1)
            assert [e.deleted for e in entries] == [False]
            held_flush = Worker(lambda: flush_one("held-worker"), name="held")
            held_flush.start()
            assert looked_up.wait(PATIENCE), "the delete's flush never reached its hold"
            other = Worker(lambda: _apply(cache, queue, entries, sessions), name="other")
            other.start()
            first = held_flush
        assert wait_until(lambda: sessions), "the other flush never connected"
        assert wait_until(lambda: not other.is_alive() or waits_for_a_lock(observer, sessions[0])), (
            "the other flush neither finished nor waited for a lock"
        )
    finally:
        resume.set()
        observer.close()
    first.result(PATIENCE)
    other.result(PATIENCE)
    while flush_model(cache, "default").entries:
        pass
    assert queue.length() == 0
    assert not models.QuerySet(Counter).filter(pk=row.pk).exists()


def _apply(cache: Any, queue: Any, entries: list[Any], sessions: list[int]) -> Any:
    """Flush ``entries`` (already delivered to this consumer) as a flush would."""
    sessions.append(session_id(connections["default"]))
    return flush_module._apply_entries(cache, "default", queue, entries)


@pytest.fixture(params=["repeatable read", "serializable"])
def isolation(request, monkeypatch):
    """Every connection of the test (the threads' too: they share the settings) at this level."""
    name = request.param
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        level: Any = IsolationLevel[name.upper().replace(" ", "_")]
    else:
        level = name
    monkeypatch.setitem(connections["default"].settings_dict["OPTIONS"], "isolation_level", level)
    connections["default"].close()  # reopened at that level
    try:
        yield name
    finally:
        connections["default"].close()  # the next test's connection at the default level again


@pytest.mark.parametrize("held", ["create", "delete"])
def test_the_race_is_closed_at_every_isolation_level(held, isolation, settings, monkeypatch):
    """
    A review's scenario: at REPEATABLE READ a PostgreSQL transaction keeps the snapshot of
    its first statement, which hid the other flush's commit from the new-row checks; the
    flush's own transaction now reads committed. MariaDB's locking reads are current reads.
    """
    # In a transaction: psycopg sets the level on the transactions it begins.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SHOW transaction_isolation" if connection.vendor == "postgresql" else "SELECT @@tx_isolation"
        )
        assert cursor.fetchone()[0].lower().replace("-", " ") == isolation
    test_a_create_and_its_delete_flushed_at_the_same_time_leave_no_row(held, 0, settings, monkeypatch)
