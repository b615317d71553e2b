"""
Fail open for reads (design.md, correctness rule 5): with Redis down or hung,
reads come from the database within the socket timeout, the circuit breaker
stops paying that timeout on every call, writes still commit, and invalidations
that could not be sent reach Redis before anything else once it answers again.

"Down" is a closed port. "Hung" is a private ``redis-server`` frozen with
SIGSTOP: it accepts the TCP data but answers nothing, so every call waits for the
socket timeout. Each test kills the servers it starts, whatever happens.

No assertion here measures time: "did not wait" is proven by what reached the
server (``traffic_to``: no connection, no write, no awaited reply) and by the
breaker's state, "paid the timeout once" by exactly one awaited reply. A call on a
hung server can only block in a connect or a reply, each bounded by the socket
timeout, so those counts bound the wait whatever the machine's speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import models, transaction
from django.test import override_settings

from cachepatterns_app import invalidation
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.store import get_store
from tests.support import PrivateRedis, cachepatterns, keys_of, private_redis, traffic_to, wait_until
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

SOCKET_TIMEOUT = 0.5
COOLDOWN = 0.5
CLOSED = 1  # a port nothing listens on

CLOSED_PORT = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{CLOSED}/0",
        "OPTIONS": {"SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT},
    }
}


def timed(fn: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def db_name(pk: Any) -> str:
    return models.QuerySet(Author).get(pk=pk).name


@pytest.fixture
def ada() -> Author:
    author: Author = Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    return author


# -- Redis down (connection refused) --------------------------------------------------------------


def test_redis_down_reads_come_from_the_database(ada, counts, django_assert_num_queries):
    """
    Fault: Redis down (connection refused on a closed loopback port) during reads by pk, unique field
    and get_many.
    Expected: every read answered from the database with exactly one query, DoesNotExist still raised,
    the breaker open after the first failure, later reads attempt no connection.
    Observed: 1 query per read, breaker open, no connection attempted while open, >= 6 degraded reads counted.
    """
    with override_settings(CACHES=CLOSED_PORT):
        for _ in range(3):
            with django_assert_num_queries(1):
                assert Author.objects.get(pk=ada.pk).name == "Ada"
        with django_assert_num_queries(1):
            assert Author.objects.get(email="ada@example.com").pk == ada.pk
        with django_assert_num_queries(1):
            assert list(Author.objects.get_many([ada.pk, ada.pk + 100])) == [ada.pk]
        with pytest.raises(Author.DoesNotExist):
            Author.objects.get(pk=ada.pk + 100)
        # The first failure opened the breaker: later reads do not even try to connect.
        assert get_store().breaker.state == "open"
        with traffic_to(CLOSED) as traffic:
            instance = Author.objects.get(pk=ada.pk)
        assert traffic.silent, traffic
        assert instance._state.db == "default"
        assert instance._state.adding is False
    assert counts("testapp.author")["degraded"] >= 6


def test_redis_down_writes_still_commit(ada, counts):
    """
    Fault: Redis down (connection refused) during save, update, create and delete.
    Expected: every write commits; the invalidations that could not be sent are counted and kept for retry.
    Observed: the rows read back from the database as written; invalidation_failed >= 1, a retry pending.
    """
    with override_settings(CACHES=CLOSED_PORT):
        ada.name = "Countess"
        ada.save()
        with transaction.atomic():
            Author.objects.filter(pk=ada.pk).update(bio="poet")
        bob = Author.objects.create(name="Bob", email="bob@example.com")
        Author.objects.filter(pk=bob.pk).delete()
        assert Author.objects.get(pk=ada.pk).name == "Countess"
    row: Author = models.QuerySet(Author).get(pk=ada.pk)
    assert (row.name, row.bio) == ("Countess", "poet")
    assert not Author.objects.filter(pk=bob.pk).exists()
    assert counts("testapp.author")["invalidation_failed"] >= 1
    assert invalidation.pending_retries() >= 1  # kept for when Redis answers


def test_redis_down_without_degrading_reads_raise(ada):
    """
    Fault: Redis down with DEGRADE_ON_FAILURE=False.
    Expected: cached reads raise CacheUnavailable (at once once the breaker is open); uncached queries
    and writes work.
    Observed: CacheUnavailable for get(pk), get(unique), get_many; the write committed.
    """
    with override_settings(CACHES=CLOSED_PORT), cachepatterns(DEGRADE_ON_FAILURE=False):
        with pytest.raises(CacheUnavailable):
            Author.objects.get(pk=ada.pk)
        with pytest.raises(CacheUnavailable):  # breaker open now: raised at once
            Author.objects.get(pk=ada.pk)
        with pytest.raises(CacheUnavailable):
            Author.objects.get(email="ada@example.com")
        with pytest.raises(CacheUnavailable):
            Author.objects.get_many([ada.pk])
        # Queries the cache never serves are unaffected, and writes still commit.
        assert Author.objects.filter(pk=ada.pk).get().name == "Ada"
        ada.name = "Countess"
        ada.save()
    assert db_name(ada.pk) == "Countess"


# -- Redis hung (SIGSTOP) -------------------------------------------------------------------------------


@pytest.fixture
def hung_capable() -> Iterator[PrivateRedis]:
    """A private server the cache points at, with a short socket timeout and cooldown."""
    with (
        private_redis() as server,
        override_settings(CACHES=server.caches(socket_timeout=SOCKET_TIMEOUT)),
        cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": COOLDOWN}),
    ):
        yield server


def fill(server: PrivateRedis, pk: Any) -> None:
    Author.objects.get(pk=pk)
    assert wait_until(lambda: server.client.exists(keys_of(Author, pk).value))


def wait_for_cooldown() -> None:
    """Wait until the breaker would let a probe through (its cooldown has passed)."""
    breaker = get_store().breaker
    assert breaker.state == "open"
    # A condition on the clock alone: it becomes true however busy the machine is.
    assert wait_until(lambda: time.monotonic() - breaker._opened_at >= COOLDOWN)


def test_redis_hung_reads_pay_the_timeout_once_then_recover(ada, hung_capable, django_assert_num_queries):
    """
    Fault: Redis hung (SIGSTOP on a private redis-server) during reads, then resumed (SIGCONT).
    Expected: the first read served from the database after one socket timeout, the breaker opens, later reads
    and a write's invalidation send nothing to Redis; after resume and cooldown the probe closes the breaker
    and reads are hits again (0 queries, one round trip).
    Observed: 1 send and 1 awaited reply for the first read, no traffic while open, breaker closed after
    resume,
    the next read a hit with 0 queries and 0 new connections.
    """
    server = hung_capable
    fill(server, ada.pk)
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=ada.pk).name == "Ada"

    server.pause()
    with django_assert_num_queries(1), traffic_to(server.port) as traffic:
        instance, elapsed = timed(lambda: Author.objects.get(pk=ada.pk))
    assert instance.name == "Ada"
    # One command sent, one reply awaited in vain: the socket timeout, paid once (a
    # lower bound, which a busy machine can only make longer).
    assert (traffic.sends, traffic.replies) == (1, 1), traffic
    assert elapsed >= SOCKET_TIMEOUT * 0.9, elapsed
    assert get_store().breaker.state == "open"

    # While the breaker is open: no call waits for the socket timeout again.
    for read in (
        lambda: Author.objects.get(pk=ada.pk),
        lambda: Author.objects.get(email="ada@example.com"),
        lambda: Author.objects.get_many([ada.pk])[ada.pk],
    ):
        with traffic_to(server.port) as traffic:
            instance = read()
        assert instance.pk == ada.pk
        assert traffic.silent, traffic
    with traffic_to(server.port) as traffic:
        Author.objects.filter(pk=ada.pk).update(bio="x")
    assert traffic.silent, traffic  # a write's invalidation does not wait either
    assert get_store().breaker.state == "open"

    server.resume()
    wait_for_cooldown()
    # The probe succeeds and closes the breaker: reads are hits again (0 queries).
    # (The update above was invalidated on recovery, so the first read refills.)
    assert Author.objects.get(pk=ada.pk).bio == "x"
    assert get_store().breaker.state == "closed"
    assert wait_until(lambda: server.client.exists(keys_of(Author, ada.pk).value))
    with django_assert_num_queries(0), traffic_to(server.port) as traffic:
        instance = Author.objects.get(pk=ada.pk)
    assert instance.bio == "x"
    assert (traffic.connects, traffic.sends, traffic.replies) == (0, 1, 1), traffic  # one round trip


def test_a_write_while_redis_hangs_commits_and_its_invalidation_lands(ada, hung_capable):
    """
    Fault: Redis hung (SIGSTOP) while a cache-aside row is saved.
    Expected: the commit stands, its invalidation costs one socket timeout and lands after Redis resumes.
    Observed: 1 awaited reply, breaker open, DB row committed, fresh value read after resume, 0 retries
    pending.
    """
    server = hung_capable
    fill(server, ada.pk)

    server.pause()
    ada.name = "Countess"
    with traffic_to(server.port) as traffic:
        ada.save()  # the after-commit invalidation waits for the socket timeout, once
    assert traffic.replies == 1, traffic
    assert get_store().breaker.state == "open"
    assert db_name(ada.pk) == "Countess"  # committed

    server.resume()
    wait_for_cooldown()
    assert Author.objects.get(pk=ada.pk).name == "Countess"
    assert invalidation.pending_retries() == 0


def test_an_invalidation_queued_while_down_is_sent_before_any_other_call(ada, hung_capable, counts):
    """
    Fault: Redis hung (SIGSTOP) with the breaker open while a row is saved (invalidation cannot be sent).
    Expected: nothing sent, the invalidation queued; once Redis returns, the queued DEL is sent before the
    first read so the stale row is never served.
    Observed: no traffic during the save, 1 pending retry, the stale entry still in Redis before recovery,
    the first read after the cooldown returned the new value and the stale entry was replaced.
    """
    server = hung_capable
    keys = keys_of(Author, ada.pk)
    fill(server, ada.pk)
    stale = server.client.get(keys.value)

    server.pause()
    Author.objects.get(pk=ada.pk)  # pays the timeout once: the breaker opens
    assert get_store().breaker.state == "open"
    ada.name = "Countess"
    with traffic_to(server.port) as traffic:
        ada.save()
    # With the breaker open nothing was sent: the invalidation is queued in this process.
    assert traffic.silent, traffic
    assert db_name(ada.pk) == "Countess"
    assert invalidation.pending_retries() == 1
    assert counts("testapp.author")["invalidation_failed"] == 1

    server.resume()
    # Redis answers again and still holds the stale row (nothing reached it).
    assert server.client.get(keys.value) == stale
    wait_for_cooldown()
    # The first call after the cooldown sends the queued DEL before its own read.
    assert Author.objects.get(pk=ada.pk).name == "Countess"
    assert invalidation.pending_retries() == 0
    assert wait_until(lambda: server.client.get(keys.value) != stale)
    assert Author.objects.get(pk=ada.pk).name == "Countess"


def test_queued_invalidations_survive_a_failed_probe(ada, hung_capable):
    """
    Fault: Redis still hung (SIGSTOP) when the breaker's cooldown ends and a probe is tried.
    Expected: the probe pays one timeout and reopens the breaker; the queued invalidation is kept and sent
    once Redis answers.
    Observed: 1 awaited reply for the probe, breaker open, 1 retry pending; 0 pending after resume.
    """
    server = hung_capable
    keys = keys_of(Author, ada.pk)
    fill(server, ada.pk)
    server.pause()
    Author.objects.get(pk=ada.pk)  # opens the breaker
    ada.name = "Countess"
    ada.save()  # queued
    wait_for_cooldown()
    # Still hung: the probe (which first tries the queued DEL) times out, reopens.
    with traffic_to(server.port) as traffic:
        instance = Author.objects.get(pk=ada.pk)
    assert instance.name == "Countess"
    assert traffic.replies == 1, traffic  # the probe's timeout, paid once
    assert get_store().breaker.state == "open"
    assert invalidation.pending_retries() == 1
    server.resume()
    wait_for_cooldown()
    assert Author.objects.get(pk=ada.pk).name == "Countess"
    assert invalidation.pending_retries() == 0
    assert server.client.get(keys.value) is None or Author.objects.get(pk=ada.pk).name == "Countess"


def test_a_fire_and_forget_send_after_the_cooldown_does_not_wedge_the_breaker(
    ada, hung_capable, django_assert_num_queries
):
    """
    Fault: Redis hung (SIGSTOP) then resumed; the first call after the cooldown is a fire-and-forget send.
    Expected: the breaker still closes and reads become hits again.
    Observed: a hit with 0 queries, breaker closed.
    """
    server = hung_capable
    fill(server, ada.pk)
    server.pause()
    Author.objects.get(pk=ada.pk)  # opens the breaker
    server.resume()
    wait_for_cooldown()
    # The first thing to reach the store after the cooldown is a fire-and-forget
    # send (a statistics flush or a fill from another thread does exactly this).
    get_store().send_no_reply([("PING",)])
    # Redis answers, so reads must be hits again, at the latest one cooldown later
    # (sleeping longer than needed is harmless: only too short a sleep could fail).
    time.sleep(COOLDOWN * 2)
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=ada.pk).name == "Ada"
    assert get_store().breaker.state == "closed"
