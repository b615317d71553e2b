"""
Redis held by the server itself with ``CLIENT PAUSE`` (a private ``redis-server``),
seen through Django's test client: a view never answers 500, reads come from the
database, the breaker opens and closes, and an invalidation that could not be sent
reaches Redis once it accepts writes again.

``CLIENT PAUSE … WRITE`` holds every command that may write (``DEL``, Lua, ``XADD``)
and still answers reads, and ``CLIENT UNPAUSE`` ends it. ``CLIENT PAUSE … ALL`` holds
everything, ``CLIENT UNPAUSE`` included on Redis 7.0 (found while writing these
tests), so that fault ends by restarting the server on its port. Nothing here
measures time: waits are proven by traffic counts and the breaker's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import models
from django.test import override_settings

from cachepatterns_app import flush_write_behind, invalidation
from cachepatterns_app.store import get_store
from tests.support import (
    PrivateRedis,
    breaker_cooled_down,
    cachepatterns,
    keys_of,
    private_redis,
    traffic_to,
    wait_until,
)
from tests.testapp.models import Author, Counter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.faults.urls")]

SOCKET_TIMEOUT = 0.5
COOLDOWN = 0.5


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with (
        private_redis() as server,
        override_settings(CACHES=server.caches(socket_timeout=SOCKET_TIMEOUT)),
        cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": COOLDOWN}),
    ):
        yield server


@pytest.fixture
def ada() -> Author:
    author: Author = Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    return author


def name_in_db(pk: Any) -> str:
    return models.QuerySet(Author).get(pk=pk).name


def test_client_pause_write_during_an_invalidation_no_500_and_retried_on_unpause(
    client, server, ada, counts, record
):
    """
    Fault: CLIENT PAUSE WRITE on the private Redis while a view renames a cached author
    (its after-commit DEL is held by the server) and while the next views read it.
    Expected: the POST answers 200 and commits; the invalidation times out once, opens the
    breaker and is queued; the next GET answers 200 with the new name from the database
    sending nothing to Redis; the stale entry is still in Redis; after CLIENT UNPAUSE and
    the cooldown the queued DEL is sent first, the breaker closes, GET answers the new name.
    Observed: POST 200 with 1 awaited reply, breaker open, 1 invalidation queued; GET 200
    "Countess" with no traffic; stale entry present until unpause; then 0 queued, breaker
    closed, GET 200 "Countess" and Redis holding the new row.
    """
    keys = keys_of(Author, ada.pk)
    assert client.get(f"/author/{ada.pk}/").json() == {"name": "Ada"}
    assert wait_until(lambda: server.client.exists(keys.value))
    stale = server.client.get(keys.value)

    server.client_pause("WRITE")
    try:
        with traffic_to(server.port) as traffic:
            response = client.post(f"/author/{ada.pk}/", {"name": "Countess"})
        assert response.status_code == 200, response.content
        assert name_in_db(ada.pk) == "Countess"
        posted = (traffic.sends, traffic.replies)
        assert get_store().breaker.state == "open"
        assert invalidation.pending_retries() == 1
        with traffic_to(server.port) as traffic:
            response = client.get(f"/author/{ada.pk}/")
        assert (response.status_code, response.json()) == (200, {"name": "Countess"})
        assert traffic.silent, traffic
        # Reads still answer during a WRITE pause: the old row is there, unreached.
        assert server.client.get(keys.value) == stale
    finally:
        server.client_unpause()

    breaker_cooled_down()
    response = client.get(f"/author/{ada.pk}/")
    assert (response.status_code, response.json()) == (200, {"name": "Countess"})
    assert invalidation.pending_retries() == 0
    assert get_store().breaker.state == "closed"
    assert wait_until(lambda: server.client.get(keys.value) not in (None, stale))
    assert counts("testapp.author")["invalidation_failed"] == 1
    record(post_traffic=f"{posted[0]} sent/{posted[1]} awaited", retries_left=0)


def test_client_pause_all_during_reads_no_500_breaker_opens_then_closes(client, server, ada, record):
    """
    Fault: CLIENT PAUSE ALL on the private Redis (every command held, CLIENT UNPAUSE too)
    while views read a cached author; the fault ends by restarting the server on its port.
    Expected: the first GET answers 200 from the database after exactly one awaited reply and
    opens the breaker; the next GETs send nothing; after the restart and the cooldown the
    breaker closes and the row is cached again (a later GET is a hit: 0 queries).
    Observed: GET 200 with 1 send/1 awaited reply, breaker open, 3 more GETs 200 with no
    traffic; after restart breaker closed, entry refilled, next GET served with 0 queries.
    """
    keys = keys_of(Author, ada.pk)
    assert client.get(f"/author/{ada.pk}/").status_code == 200
    assert wait_until(lambda: server.client.exists(keys.value))

    server.client_pause("ALL")
    with traffic_to(server.port) as traffic:
        response = client.get(f"/author/{ada.pk}/")
    assert (response.status_code, response.json()) == (200, {"name": "Ada"})
    assert (traffic.sends, traffic.replies) == (1, 1), traffic
    assert get_store().breaker.state == "open"
    for _ in range(3):
        with traffic_to(server.port) as traffic:
            assert client.get(f"/author/{ada.pk}/").status_code == 200
        assert traffic.silent, traffic

    server.crash()  # CLIENT UNPAUSE would itself be held
    server.start()
    breaker_cooled_down()
    assert client.get(f"/author/{ada.pk}/").status_code == 200
    assert get_store().breaker.state == "closed"
    assert wait_until(lambda: server.client.exists(keys.value))
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"/author/{ada.pk}/").json() == {"name": "Ada"}
    assert len(queries) == 0, queries.captured_queries
    record(first_read="1 sent/1 awaited", reads_while_open_with_traffic=0)


def test_client_pause_write_during_a_write_behind_save_falls_back_to_the_database(server, record):
    """
    Fault: CLIENT PAUSE WRITE on the private Redis while a write-behind row is saved
    (ON_CACHE_FAILURE "sync": its HSET+XADD is held by the server).
    Expected: save() returns only after the row is in the database (synchronous fallback),
    never reporting a queued write that is not there; after CLIENT UNPAUSE a flush leaves the
    database exact (the held queue write was dropped or, if applied, carries the same state).
    Observed: the saved name in the database right after save(); after unpause and a flush
    still the saved name and views; the stream empty of unflushed entries.
    """
    from django.conf import settings

    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "ON_CACHE_FAILURE": "sync"}
    with cachepatterns(WRITE_BEHIND=wb, CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": COOLDOWN}):
        counter = Counter(name="before", views=1)
        counter.save()
        flush_write_behind(Counter)
        server.client_pause("WRITE")
        try:
            counter.name, counter.views = "during the pause", 2
            counter.save()
            row = models.QuerySet(Counter).get(pk=counter.pk)
            assert (row.name, row.views) == ("during the pause", 2)
        finally:
            server.client_unpause()
        breaker_cooled_down()
        flush_write_behind(Counter)
        row = models.QuerySet(Counter).get(pk=counter.pk)
        assert (row.name, row.views) == ("during the pause", 2)
        assert Counter.objects.get(pk=counter.pk).name == "during the pause"
    record(db_after_save="during the pause/2", db_after_unpause_and_flush="during the pause/2")
