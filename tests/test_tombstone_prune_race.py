"""
The tombstone prune races a newer delete of the same row (found by a review): the row
was deleted and flushed (tombstone at t1), saved again (queued at s), and deleted again
directly (its tombstone updated in place to t2 > s) while the prune runs with the floor
s. The prune must leave t2: it still stops the queued save at s. Driven with a row lock
the test holds, not timing: the prune's DELETE waits for the uncommitted t2, and the
lock wait is seen in the server before the test commits it.

With a delete signal receiver connected anywhere (an audit log), ``QuerySet.delete()``
collects ids first and deletes by id, which removed t2; the prune is one statement.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, connections, models
from django.db.models import signals

from cachepatterns_app import flush_write_behind
from cachepatterns_app.models import WriteBehindTombstone
from cachepatterns_app.patterns.write_behind.model import prune_tombstones
from cachepatterns_app.registry import row_cache_for
from tests.support import PATIENCE, Worker, session_id, wait_until, waits_for_a_lock
from tests.testapp.models import Counter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor not in ("mysql", "postgresql"), reason="row locks between two connections"
    ),
]


def test_a_tombstone_updated_by_a_newer_delete_during_the_prune_is_kept():
    cache = row_cache_for(Counter)
    row = Counter(name="v1")
    row.save()
    row.delete()
    flush_write_behind(Counter)  # tombstone t1; nothing queued
    label, text = cache.label, str(row.pk)
    (t1,) = models.QuerySet(WriteBehindTombstone).filter(label=label).values_list("seq", flat=True)
    Counter(pk=row.pk, name="v2, queued before the second delete").save()  # queued at s > t1

    audited: list[Any] = []

    def audit(sender: Any, instance: Any, **kwargs: Any) -> None:
        audited.append(sender)  # a project's receiver for every model's deletes

    signals.pre_delete.connect(audit, weak=False, dispatch_uid="test-audit")
    holder = connections.create_connection("default")
    observer = connections.create_connection("default")
    pruner = None
    try:
        t2 = cache.next_seq("default")  # the second (direct) delete's sequence: above s
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute(
                "UPDATE cachepatterns_app_writebehindtombstone SET seq = %s "
                "WHERE label = %s AND pk_text = %s",
                [t2, label, text],
            )
            assert cursor.rowcount == 1
        sessions: list[int] = []

        def prune() -> int:
            sessions.append(session_id(connections["default"]))
            return prune_tombstones(cache, "default")

        pruner = Worker(prune, name="pruner")
        pruner.start()
        assert wait_until(lambda: sessions), "the prune never connected"
        assert wait_until(lambda: waits_for_a_lock(observer, sessions[0])), "the prune never waited for t2"
        holder.commit()
        pruned = pruner.result()
    finally:
        signals.pre_delete.disconnect(dispatch_uid="test-audit")
        if not holder.get_autocommit():
            holder.rollback()
        holder.close()
        observer.close()
        if pruner is not None:
            pruner.join(PATIENCE)
    assert pruned == 0
    assert WriteBehindTombstone not in audited, "the prune went through the collector"
    left = dict(models.QuerySet(WriteBehindTombstone).filter(label=label).values_list("pk_text", "seq"))
    assert left == {text: t2}
    assert t2 > t1
    flush_write_behind(Counter)  # the save at s < t2 is skipped
    assert models.QuerySet(Counter).filter(pk=row.pk).first() is None
