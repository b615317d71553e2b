"""
Single flight (design.md, correctness rule 3): concurrent misses of one key load
the row once, and a lease whose holder died delays readers by at most
``LOCK_TIMEOUT``, never forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import leases
from cachepatterns_app import store as store_module
from tests.support import SelectCounter, Worker, cachepatterns, keys_of, settle, wait_until
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = Author._meta.db_table
THREADS = 50


def stampede(read: Callable[[], Any], n: int = THREADS) -> tuple[list[Any], SelectCounter]:
    """Run ``read`` in ``n`` threads released together; return results and the SELECT count."""
    counter = SelectCounter(TABLE)
    barrier = threading.Barrier(n)

    def one() -> Any:
        with connection.execute_wrapper(counter):
            barrier.wait(15)
            return read()

    workers = [Worker(one, name=f"reader-{i}") for i in range(n)]
    for worker in workers:
        worker.start()
    return [worker.result(60) for worker in workers], counter


@pytest.fixture
def ada() -> Author:
    author: Author = Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    return author


def test_concurrent_misses_of_one_key_load_it_once(ada, redis, counts):
    results, counter = stampede(lambda: Author.objects.get(pk=ada.pk))

    assert counter.count <= 2, f"{counter.count} SELECTs for one key"
    assert len(results) == THREADS
    for author in results:
        assert author.pk == ada.pk
        assert (author.name, author.email) == ("Ada", "ada@example.com")
    assert counts("testapp.author").get("miss", 0) <= 2
    settle()
    assert redis.exists(keys_of(Author, ada.pk).value) == 1
    assert redis.exists(keys_of(Author, ada.pk).lease) == 0


# A read script that never makes a caller wait: what the library would do without leases.
READ_WITHOUT_SINGLE_FLIGHT = """
local value = redis.call('GET', KEYS[1])
if value then
  return {1, value}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {2}
"""


def test_control_without_the_lease_every_reader_loads(ada, monkeypatch):
    # The store loads scripts by name on first use (a fresh store per test).
    monkeypatch.setitem(store_module.SCRIPTS, "read", READ_WITHOUT_SINGLE_FLIGHT)
    n = 5
    # Every SELECT waits until all n readers have run theirs, so none can hit a
    # fill made by another: exactly the stampede the lease prevents.
    after_select = threading.Barrier(n)

    def meet(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("SELECT") and TABLE in sql:
            after_select.wait(15)
        return result

    def read() -> Any:
        with connection.execute_wrapper(meet):
            return Author.objects.get(pk=ada.pk)

    results, counter = stampede(read, n=n)
    assert all(author.pk == ada.pk for author in results)
    assert counter.count == n


def test_concurrent_misses_by_unique_field_load_once(ada):
    results, counter = stampede(lambda: Author.objects.get(email="ada@example.com"))
    assert all(author.pk == ada.pk for author in results)
    assert counter.count <= 2, f"{counter.count} SELECTs for one key"


def test_concurrent_misses_of_a_missing_row_all_raise(ada, redis):
    missing = ada.pk + 1000

    def read() -> str:
        try:
            Author.objects.get(pk=missing)
        except Author.DoesNotExist:
            return "absent"
        return "found"

    results, _ = stampede(read, n=10)
    assert results == ["absent"] * 10
    settle()
    assert redis.exists(keys_of(Author, missing).value, keys_of(Author, missing).lease) == 0


LOCK_TIMEOUT = 1.0
#: Deliberately far longer than any test here should wait: a reader released before
#: it can only have been released by the event the test caused.
LONG_LOCK_TIMEOUT = 60.0


def waits(counts: Any) -> int:
    return int(counts("testapp.author").get("wait", 0))


def test_a_reader_behind_a_dead_holder_goes_on_as_soon_as_the_lease_expires(ada, redis, counts):
    # Leases live LOCK_TIMEOUT (SET PX): the end of a dead holder's lease is the end of
    # the wait. Here the dead lease lives the whole (long) LOCK_TIMEOUT until the test
    # ends it, so the reader is certainly waiting first, however slow the machine. (A
    # lease with no expiry at all would be replaced by the reader, not waited for.)
    keys = keys_of(Author, ada.pk)
    counter = SelectCounter(TABLE)
    with cachepatterns(LOCK_TIMEOUT=LONG_LOCK_TIMEOUT):
        assert redis.set(keys.lease, "dead-holder", nx=True, px=int(LONG_LOCK_TIMEOUT * 1000))

        def read() -> Author:
            with connection.execute_wrapper(counter):
                return Author.objects.get(pk=ada.pk)

        reader = Worker(read, name="reader")
        reader.start()
        assert wait_until(lambda: waits(counts) == 1), "the reader never waited for the lease"
        assert counter.count == 0  # single flight: it waits instead of querying
        redis.pexpire(keys.lease, 1)  # the dead holder's lease reaches the end of its life
        author = reader.result()

    assert author.name == "Ada"
    # It took the expired lease itself and filled (a reader that had given up at its
    # deadline would count "bypass" and fill nothing).
    seen = counts("testapp.author")
    assert (seen.get("miss"), seen.get("fill"), seen.get("bypass", 0)) == (1, 1, 0), seen
    assert counter.count == 1
    settle()
    assert redis.exists(keys.value) == 1


def test_many_readers_behind_a_dead_lease_holder_all_finish_after_one_query(ada, redis, counts):
    keys = keys_of(Author, ada.pk)
    n = 10
    counter = SelectCounter(TABLE)
    with cachepatterns(LOCK_TIMEOUT=LONG_LOCK_TIMEOUT):
        assert redis.set(keys.lease, "dead-holder", nx=True, px=int(LONG_LOCK_TIMEOUT * 1000))

        def read() -> Author:
            with connection.execute_wrapper(counter):
                return Author.objects.get(pk=ada.pk)

        readers = [Worker(read, name=f"reader-{i}") for i in range(n)]
        for reader in readers:
            reader.start()
        assert wait_until(lambda: waits(counts) == n), f"{waits(counts)} of {n} readers waited"
        redis.pexpire(keys.lease, 1)
        results = [reader.result(60) for reader in readers]

    assert [author.name for author in results] == ["Ada"] * n
    # One of them took the lease and loaded; the others waited for its fill.
    assert counter.count == 1, f"{counter.count} SELECTs for one key"
    assert counts("testapp.author").get("bypass", 0) == 0


class FakeClock:
    """Stands in for the ``time`` module of ``leases``: ``sleep`` advances the clock."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_waiting_reader_gives_up_once_lock_timeout_has_passed(ada, redis, counts, monkeypatch):
    # The upper bound of the wait, on a clock that moves only by the reader's own
    # sleeps: exact, whatever else the machine is doing. Redis is real; its lease lives
    # the whole (long, real) LOCK_TIMEOUT, so only the reader's deadline can end the wait.
    clock = FakeClock()
    monkeypatch.setattr(leases, "time", clock)
    keys = keys_of(Author, ada.pk)
    with cachepatterns(LOCK_TIMEOUT=LONG_LOCK_TIMEOUT):
        redis.set(keys.lease, "stuck", px=int(LONG_LOCK_TIMEOUT * 1000))
        author = Author.objects.get(pk=ada.pk)

    assert author.name == "Ada"
    waited = sum(clock.sleeps)
    # At least LOCK_TIMEOUT, and past it by less than one polling interval (<= 50 ms).
    assert LONG_LOCK_TIMEOUT <= waited < LONG_LOCK_TIMEOUT + 0.05, waited
    assert max(clock.sleeps) <= 0.05
    seen = counts("testapp.author")
    assert (seen.get("wait"), seen.get("bypass")) == (1, 1), seen
    assert redis.get(keys.lease) == b"stuck"


@pytest.mark.parametrize("ttl_ms", [None, 10**9], ids=["no-expiry", "outlives-any-lease"])
def test_a_lease_no_code_could_have_granted_is_replaced_without_waiting(ada, redis, counts, ttl_ms):
    # A lease with no expiry, or one longer than LOCK_TIMEOUT (a restore, a hand
    # edit, an older deployment): the read script replaces it, so the reader neither
    # waits for it nor bypasses the cache; the repair is logged and counted.
    keys = keys_of(Author, ada.pk)
    with cachepatterns(LOCK_TIMEOUT=LOCK_TIMEOUT):
        redis.set(keys.lease, "stuck", px=ttl_ms)
        with CaptureQueriesContext(connection) as queries:
            author = Author.objects.get(pk=ada.pk)
        settle()
    assert author.name == "Ada"
    assert len(queries) == 1
    assert redis.exists(keys.value) == 1, "the reader filled the row: it held the lease"
    assert redis.exists(keys.lease) == 0
    seen = counts("testapp.author")
    assert seen.get("wait", 0) == 0
    assert seen["corrupt"] == 1
    assert seen.get("bypass", 0) == 0


def test_a_loader_that_fails_gives_its_lease_back(ada, redis, counts):
    keys = keys_of(Author, ada.pk)

    def fail(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith("SELECT") and TABLE in sql:
            raise OperationalError("database went away")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail), pytest.raises(OperationalError):
        Author.objects.get(pk=ada.pk)
    settle()
    assert redis.exists(keys.lease) == 0  # released at once, not left to expire

    # So the next reader does not wait for it at all: it takes the lease and loads.
    assert Author.objects.get(pk=ada.pk).name == "Ada"
    assert counts("testapp.author").get("wait", 0) == 0
