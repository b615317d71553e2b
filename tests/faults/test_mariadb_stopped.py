"""
MariaDB stopped in the middle of a write-behind flush: a private ``mariadbd``
(``tests.mariadb``) is the ``default`` database for the test, and the flush's own
read of the queue stops it (cleanly with ``SHUTDOWN``, or with SIGKILL), so the
server is gone exactly between the queue read and the commit. It is then started
again on the same data directory (after SIGKILL: InnoDB's crash recovery).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection, connections, models

from cachepatterns_app import flush_write_behind
from cachepatterns_app.patterns.write_behind.flush import TRANSIENT_ATTEMPTS, flush_model
from cachepatterns_app.patterns.write_behind.queue import Queue
from cachepatterns_app.registry import row_cache_for
from tests.mariadb import PrivateMariaDB, available, private_mariadb
from tests.support import MYSQL, flush_until_drained
from tests.testapp.models import Counter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not MYSQL, reason="the private server is a MariaDB: the MySQL/MariaDB leg only"),
]


@pytest.fixture
def server(transactional_db: Any) -> Iterator[PrivateMariaDB]:
    """Point the ``default`` alias at a private server holding the tables this test uses."""
    why = available()
    if why:
        pytest.skip(why)
    default = settings.DATABASES["default"]
    assert connections["default"].settings_dict is default
    saved = {key: default[key] for key in ("HOST", "PORT", "NAME")}
    with private_mariadb() as server:
        server.execute("CREATE DATABASE cp CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        connection.close()
        default.update(HOST="127.0.0.1", PORT=server.port, NAME="cp")
        try:
            with connection.schema_editor() as editor:
                for model in [Counter, *apps.get_app_config("cachepatterns_app").get_models()]:
                    editor.create_model(model)
            yield server
        finally:
            connection.close()
            default.update(saved)


def views() -> dict[Any, int]:
    return dict(models.QuerySet(Counter).values_list("pk", "views"))


@pytest.mark.parametrize("stop", ["shutdown", "kill"])
def test_mariadb_stopped_during_a_flush_keeps_the_writes_queued(server, stop, monkeypatch, caplog, record):
    """
    Fault: the (private) MariaDB server is stopped — a clean SHUTDOWN, or SIGKILL — after a
    write-behind flush read five counted writes from the queue and before it committed them;
    then it is started again on the same data directory.
    Expected: the flush retries its transient attempts, then leaves the five writes queued and
    pending (none acknowledged, none applied); after the restart (crash recovery after SIGKILL)
    the rows committed before the fault are intact, and the flush that reclaims the writes
    applies each exactly once.
    Observed: one warning per attempt, the five entries left pending; after the restart the five
    rows at 0, then at exactly +7 each, the queue empty.
    """
    cache = row_cache_for(Counter)
    queue = cache.queue("default")
    counters = [Counter(name=f"c{i}") for i in range(5)]
    for counter in counters:
        counter.save()
    flush_write_behind(Counter)
    assert views() == {c.pk: 0 for c in counters}  # committed on the private server
    for counter in counters:
        Counter.objects.incr(counter.pk, "views", 7)

    read_new = Queue.read_new
    stopped: list[int] = []

    def stop_after_reading(self: Queue, consumer: str, count: int) -> Any:
        entries = read_new(self, consumer, count)
        if entries and not stopped:
            stopped.append(len(entries))
            if stop == "shutdown":
                server.shutdown()
            else:
                server.kill()
        return entries

    monkeypatch.setattr(Queue, "read_new", stop_after_reading)
    with caplog.at_level(logging.WARNING, "cachepatterns_app"):
        blocked = flush_model(cache, "default")
    monkeypatch.setattr(Queue, "read_new", read_new)
    unavailable = [r.getMessage() for r in caplog.records if "database is unavailable" in r.getMessage()]
    assert stopped == [5]
    assert not server.running
    assert len(unavailable) == TRANSIENT_ATTEMPTS, [r.getMessage() for r in caplog.records]
    assert (blocked.left, blocked.entries, blocked.rows) == (5, 0, 0)
    assert queue.length() == 5
    assert queue.pending_summary()[0] == 5  # delivered, none acknowledged

    server.start()
    connection.close()
    assert views() == {c.pk: 0 for c in counters}  # what was committed survived; nothing applied
    results = flush_until_drained(cache)
    assert queue.length() == 0
    assert sum(r.rows for r in results) == 5
    assert sum(r.entries for r in results) == 5
    assert views() == {c.pk: 7 for c in counters}
    assert queue.pending_summary()[0] == 0
    record(
        stopped_with=stop,
        failed_attempts=len(unavailable),
        left_queued=blocked.left,
        after_restart="5 rows at +7",
    )
