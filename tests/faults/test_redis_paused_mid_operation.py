"""
Redis held with ``CLIENT PAUSE WRITE`` (a private ``redis-server``) at the worst
moment of a background job: a write-behind flush between its database commit and
its acknowledgement, and a refresh-ahead reload between its database read and its
put. The pause starts exactly there, from a wrapper around the job's own step, so
the interleaving is the test's, not the scheduler's; it ends with ``CLIENT
UNPAUSE``. The jobs run as their Celery tasks do, in this process (``Task.apply``),
so an error escaping a task fails the test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, models
from django.test import override_settings

from cachepatterns_app import flush_write_behind, invalidation, tasks
from cachepatterns_app.patterns.refresh_ahead import refresh_row, worker
from cachepatterns_app.patterns.write_behind.queue import Queue
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store
from tests.refreshapp.models import Headline
from tests.support import (
    PrivateRedis,
    breaker_cooled_down,
    cachepatterns,
    flush_until_drained,
    keys_of,
    private_redis,
    traffic_to,
    wait_until,
)
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)

SOCKET_TIMEOUT = 0.5
COOLDOWN = 0.5


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with (
        private_redis() as server,
        override_settings(CACHES=server.caches(socket_timeout=SOCKET_TIMEOUT)),
        cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": COOLDOWN}),
    ):
        try:
            yield server
        finally:
            server.client_unpause()


def views() -> dict[Any, int]:
    return dict(models.QuerySet(Counter).values_list("pk", "views"))


def test_redis_paused_between_a_flushs_commit_and_its_acknowledgement(server, monkeypatch, caplog, record):
    """
    Fault: CLIENT PAUSE WRITE on the private Redis starting right after a write-behind flush
    (the cachepatterns.flush_write_behind task) committed five counted rows and before it
    acknowledged their queue entries; the acknowledgement is held until the socket timeout.
    Expected: the task finishes without raising (a WARNING, no error but the breaker's
    opening, 0 returned); the commit stands; the
    ten entries (two counts per row) stay queued and pending; after CLIENT UNPAUSE a flush
    reclaims them and skips them as stale (none applied twice) while a newer count queued
    meanwhile is applied; the queue ends empty and every row exact.
    Observed: the rows at +7 when the pause began, the task successful with a warning, ten
    entries still pending; after unpause the five rows' entries reclaimed and skipped as stale,
    one new write applied, the rows at 7, 7, 7, 7, 8 and the stream empty.
    """
    cache = row_cache_for(Counter)
    queue = cache.queue("default")
    counters = [Counter(name=f"c{i}") for i in range(5)]
    for counter in counters:
        counter.save()
    flush_write_behind(Counter)
    for counter in counters:
        Counter.objects.incr(counter.pk, "views", 3)
        Counter.objects.incr(counter.pk, "views", 4)
    acknowledge = Queue.acknowledge
    at_pause: list[dict[Any, int]] = []

    def paused_first(self: Queue, ids: Any, then: Any = ()) -> None:
        if not at_pause:
            # Committed: what the database holds now is what the flush wrote.
            at_pause.append(views())
            server.client_pause("WRITE")
        acknowledge(self, ids, then)

    monkeypatch.setattr(Queue, "acknowledge", paused_first)
    with caplog.at_level(logging.WARNING, "cachepatterns_app"):
        task = tasks.flush_write_behind.apply(args=("testapp.counter",))
    assert task.successful(), task.traceback
    assert task.result == 0
    monkeypatch.setattr(Queue, "acknowledge", acknowledge)
    assert at_pause == [{c.pk: 7 for c in counters}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("committed but could not acknowledge" in m for m in warnings), warnings
    # The breaker's opening is logged at ERROR (it is one); nothing else is.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert all("circuit breaker open" in m for m in errors), errors
    # Reads are answered during a WRITE pause: the entries are all still there, delivered.
    assert server.client.xlen(queue.keys.stream) == 10  # two counts per row
    assert server.client.xpending(queue.keys.stream, queue.keys.GROUP)["pending"] == 10
    assert views() == {c.pk: 7 for c in counters}

    server.client_unpause()
    breaker_cooled_down()
    Counter.objects.incr(counters[4].pk, "views", 1)  # a newer write, queued after the pause
    results = flush_until_drained(cache)
    assert queue.length() == 0
    assert sum(r.stale for r in results) == 5  # one per row: its two entries coalesce
    assert sum(r.rows for r in results) == 1
    assert sum(r.entries for r in results) == 11
    assert views() == {**{c.pk: 7 for c in counters[:4]}, counters[4].pk: 8}
    assert server.client.xpending(queue.keys.stream, queue.keys.GROUP)["pending"] == 0
    record(at_pause="5 rows at +7", pending_after_task=10, rows_skipped_as_stale=5, applied_after=1)


def test_redis_paused_between_a_refreshs_read_and_its_put(server, monkeypatch, caplog, record):
    """
    Fault: CLIENT PAUSE WRITE on the private Redis starting right after a refresh-ahead reload
    of a cached row (the cachepatterns.refresh_row task) read the row from the database and
    before it stored it; the put is held until the socket timeout; during the pause the row is
    renamed (its invalidation cannot be sent either).
    Expected: the task returns "failed" without raising; reads during the pause answer the
    database's row; after CLIENT UNPAUSE and the cooldown the held invalidation is sent, no
    stale copy is left, and the next refresh stores the database's current row.
    Observed: the task "failed" with one awaited reply, the rename read from the database
    during the pause; after unpause the old copy gone, the refresh "done" and the row read
    from Redis (0 queries) with the database's latest title.
    """
    scheduled: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "schedule", lambda task, kwargs, label, using: scheduled.append(kwargs))
    headline = Headline.objects.create(owner=1, title="cached")
    keys = keys_of(Headline, headline.pk)
    assert Headline.objects.get(pk=headline.pk).title == "cached"
    assert wait_until(lambda: server.client.exists(keys.value))
    cached = server.client.get(keys.value)
    # Changed behind the cache's back: only the reload can show it.
    models.QuerySet(Headline).filter(pk=headline.pk).update(title="reloaded")
    assert server.client.pexpire(keys.value, 5_000)  # inside the refresh window
    assert Headline.objects.get(pk=headline.pk).title == "cached"
    (kwargs,) = scheduled

    paused: list[str] = []

    def pause_after_read(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not paused and sql.lstrip().upper().startswith("SELECT") and "refreshapp_headline" in sql:
            paused.append(sql)
            server.client_pause("WRITE")
        return result

    with (
        caplog.at_level(logging.WARNING, "cachepatterns_app"),
        connections["default"].execute_wrapper(pause_after_read),
        traffic_to(server.port) as traffic,
    ):
        task = tasks.refresh_row.apply(kwargs=kwargs)
    assert paused, "the refresh never read the row"
    assert task.successful(), task.traceback
    assert task.result == worker.FAILED
    assert "abandoned" in caplog.text
    held = traffic.replies
    assert get_store().breaker.state == "open"
    assert server.client.get(keys.value) == cached  # the put did not land

    headline.title = "renamed during the pause"
    headline.save()  # commits; its invalidation cannot be sent and waits for Redis
    assert invalidation.pending_retries() > 0
    assert Headline.objects.get(pk=headline.pk).title == "renamed during the pause"

    server.client_unpause()
    breaker_cooled_down()
    assert Headline.objects.get(pk=headline.pk).title == "renamed during the pause"
    assert invalidation.pending_retries() == 0
    assert get_store().breaker.state == "closed"
    assert wait_until(lambda: server.client.get(keys.value) not in (None, cached))

    # The next refresh stores what the database holds now.
    scheduled.clear()
    models.QuerySet(Headline).filter(pk=headline.pk).update(title="latest")
    assert server.client.pexpire(keys.value, 5_000)
    assert Headline.objects.get(pk=headline.pk).title == "renamed during the pause"
    (kwargs,) = scheduled
    assert refresh_row(**kwargs) == worker.DONE
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert Headline.objects.get(pk=headline.pk).title == "latest"
    assert len(queries) == 0, queries.captured_queries
    record(put_awaited_replies=held, refresh_after_unpause="done")
