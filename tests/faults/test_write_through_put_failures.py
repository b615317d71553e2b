"""
Write-through when Redis fails at put time (issue 4): the database commit stands,
nothing raises, and the key is invalidated as soon as Redis answers again — before
any other call can read the old value — counted and logged.

Each test runs its own ``redis-server`` on a free loopback port and freezes it with
SIGSTOP: a hung Redis, the worst case (connections are accepted, nothing answers,
each call costs the socket timeout). The server is killed when the test ends,
whatever happens. "Did not hang" and "did not wait" are proven by what reached the
server (``traffic_to``) and the breaker's state, never by a stopwatch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.db import connection, transaction
from django.test import override_settings

from cachepatterns_app import cache_aside, invalidation, write_through
from cachepatterns_app.keys import model_label
from cachepatterns_app.models import PendingInvalidation
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store
from tests.profiles import db_row, existing, orm, state
from tests.support import (
    PrivateRedis,
    SelectCounter,
    breaker_cooled_down,
    cachepatterns,
    keys_of,
    plain_keys,
    private_redis,
    settle,
    traffic_to,
)
from tests.testapp.models import Profile

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = model_label(Profile)
SOCKET_TIMEOUT = 0.5
COOLDOWN = 0.5


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    """A private Redis the app uses, with a short socket timeout and breaker cooldown."""
    with (
        private_redis() as redis_server,
        override_settings(CACHES=redis_server.caches(SOCKET_TIMEOUT)),
        cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": COOLDOWN}),
    ):
        yield redis_server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="cachepatterns_app")
    return caplog


def cached(server: PrivateRedis, pk: Any) -> Profile | None:
    raw = cast("bytes | None", server.client.get(keys_of(Profile, pk).value))
    if raw is None:
        return None
    cache = row_cache_for(Profile)
    assert cache is not None
    return cast(Profile, cache.decode(raw, "default"))


def cached_entry(server: Any, pk: Any) -> Profile:
    """Return the row cached for ``pk``; it must be cached."""
    entry = cached(server, pk)
    assert entry is not None, f"row {pk} is not cached"
    return entry


def cached_profile(server: PrivateRedis) -> Profile:
    """Create a profile; its write-through put caches it in ``server``."""
    profile: Profile = Profile.objects.create(handle="fault", name="old")
    entry = cached(server, profile.pk)
    assert entry is not None
    assert entry.name == "old"
    return profile


@contextlib.contextmanager
def profile_selects() -> Iterator[SelectCounter]:
    """
    Count the SELECTs on the profile table (a miss costs one, a hit none).

    Other queries (the durable record of a queued invalidation being deleted on
    recovery) are not what tells a hit from a miss.
    """
    counter = SelectCounter(Profile._meta.db_table)
    with connection.execute_wrapper(counter):
        yield counter


def after_cooldown() -> None:
    """Wait until the breaker's cooldown is over, if it is open (its next call is a trial)."""
    if get_store().breaker.state == "open":
        breaker_cooled_down()


def save_new(profile: Profile, in_transaction: bool) -> None:
    profile.name = "new"
    if in_transaction:
        with transaction.atomic():
            profile.save()
    else:
        profile.save()


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
def test_redis_hung_at_put_time_the_commit_stands_and_recovery_invalidates_first(
    server, logs, counts, django_assert_num_queries, in_transaction
):
    """
    Fault: Redis hung (SIGSTOP) when a write-through row's after-commit put is sent (in and outside a
    transaction).
    Expected: the commit stands, nothing raises, one socket timeout paid, the key invalidated (durably
    recorded)
    before any other call once Redis answers, logged as an error.
    Observed: 1 awaited reply, breaker open, the row committed, 1 pending invalidation (in memory and in
    the table),
    the first read after recovery sent the DEL first and read the new row with 1 SELECT; then a hit with
    0 queries.
    """
    profile = cached_profile(server)
    puts_before = counts(LABEL).get("put", 0)

    server.pause()
    try:
        with traffic_to(server.port) as traffic:
            save_new(profile, in_transaction)  # must not raise
    finally:
        server.resume()

    # The put's one awaited reply timed out and opened the breaker; nothing else waited.
    assert traffic.replies == 1, f"the save waited for {traffic.replies} replies: {traffic}"
    assert get_store().breaker.state == "open"
    row = existing(profile.pk)
    assert (row.name, row.version) == ("new", 1)  # the commit stands
    assert counts(LABEL).get("invalidation_failed") == 1
    assert counts(LABEL).get("put", 0) == puts_before
    assert invalidation.pending_retries() == 1
    assert PendingInvalidation.objects.count() == 1  # the durable copy, for other processes
    assert any(
        r.levelno == logging.ERROR
        and "put failed" in r.getMessage()
        and "invalidated on recovery" in r.getMessage()
        for r in logs.records
    ), logs.text

    # The breaker is open: a read now answers from the database, without waiting.
    with profile_selects() as selects, traffic_to(server.port) as traffic:
        Profile.objects.get(pk=profile.pk)
    assert traffic.silent, traffic
    assert selects.count == 1

    after_cooldown()
    # The first call once Redis answers sends the queued invalidation before the read,
    # so the read misses (one SELECT) — whatever the hung put left — and gets the new row.
    with profile_selects() as selects:
        got = Profile.objects.get(pk=profile.pk)
    assert selects.count == 1
    assert state(got) == state(row)
    assert invalidation.pending_retries() == 0
    assert PendingInvalidation.objects.count() == 0
    assert counts(LABEL).get("invalidation", 0) >= 1
    assert "Sent 1 invalidation(s) queued while Redis was unavailable" in logs.text
    assert server.command_calls().get("del", 0) >= 1

    settle()
    entry = cached(server, profile.pk)
    assert entry is not None
    assert state(entry) == state(row)
    with django_assert_num_queries(0):
        assert state(Profile.objects.get(pk=profile.pk)) == state(row)


def test_a_put_while_the_breaker_is_open_fails_fast_and_is_retried(
    server, logs, counts, django_assert_num_queries
):
    """
    Fault: Redis hung (SIGSTOP) and the breaker already open when a write-through save commits.
    Expected: the save sends nothing to Redis (fails fast), the put becomes a queued invalidation,
    retried on recovery.
    Observed: no connection, send or reply during the save; 1 retry pending, then 0 and the new row read.
    """
    profile = cached_profile(server)
    server.pause()
    try:
        Profile.objects.get(pk=profile.pk)  # pays the timeout once, opens the breaker
        assert get_store().breaker.state == "open"
        with traffic_to(server.port) as traffic:
            save_new(profile, in_transaction=False)
    finally:
        server.resume()

    # Nothing was written to Redis, no reply awaited, no connection tried: the save
    # cannot have waited for Redis, however long it took on a busy machine.
    assert traffic.silent, f"the save reached Redis although the breaker was open: {traffic}"
    assert get_store().breaker.state == "open"
    assert existing(profile.pk).name == "new"
    assert counts(LABEL).get("invalidation_failed") == 1
    assert invalidation.pending_retries() == 1

    after_cooldown()
    with profile_selects() as selects:
        assert Profile.objects.get(pk=profile.pk).name == "new"
    assert selects.count == 1
    assert invalidation.pending_retries() == 0


def test_a_delete_while_redis_is_hung_tombstones_on_recovery(server, counts):
    """
    Fault: Redis hung (SIGSTOP) while a write-through row is deleted.
    Expected: the delete commits; on recovery the value is removed and the version key tombstoned.
    Observed: the row gone from the DB, DoesNotExist after recovery, value key absent, version key "x".
    """
    profile = cached_profile(server)
    pk = profile.pk
    server.pause()
    try:
        profile.delete()  # must not raise
    finally:
        server.resume()

    assert db_row(pk) is None
    assert counts(LABEL).get("invalidation_failed") == 1
    assert invalidation.pending_retries() == 1

    after_cooldown()
    with pytest.raises(Profile.DoesNotExist):
        Profile.objects.get(pk=pk)
    assert invalidation.pending_retries() == 0
    keys = keys_of(Profile, pk)
    assert server.client.get(keys.value) is None
    assert server.client.get(keys.version) == b"x"


@write_through(key="fault-profile:{handle}")
def rename(handle: str, name: str) -> Profile:
    profile = orm().get(handle=handle)
    profile.name = name
    profile.save()
    return profile


@cache_aside(key="fault-profile:{handle}")
def profile_of(handle: str) -> Profile:
    return orm().get(handle=handle)


def test_write_through_decorator_put_while_redis_is_hung_is_invalidated_on_recovery(
    server, logs, counts, django_assert_num_queries
):
    """
    Fault: Redis hung (SIGSTOP) while a @write_through writer's put is sent.
    Expected: the writer returns its value, the put failure is logged and counted, the key invalidated
    on recovery.
    Observed: the new value returned and committed, the reader refilled with 1 SELECT, then a hit with 0
    queries.
    """
    cached_profile(server)
    assert profile_of("fault").name == "old"
    settle()
    assert server.client.exists(plain_keys("fault-profile:fault").value) == 1

    server.pause()
    try:
        returned = rename("fault", "new")  # must not raise
    finally:
        server.resume()

    assert returned.name == "new"
    assert existing(returned.pk).name == "new"
    assert counts("fault-profile:{handle}").get("invalidation_failed") == 1
    assert "write_through put of fault-profile:fault failed" in logs.text

    after_cooldown()
    with profile_selects() as selects:
        assert profile_of("fault").name == "new"
    assert selects.count == 1
    assert invalidation.pending_retries() == 0
    settle()
    with django_assert_num_queries(0):
        assert profile_of("fault").name == "new"
