"""
A private Redis at its ``maxmemory`` with ``noeviction``: every command that may
grow memory is refused with OOM. A write-behind save must then fail loud (or write
the database synchronously, as configured) and leave nothing half-written in Redis:
the row's hash and its stream entry are written together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from django.db import models
from django.test import override_settings

from cachepatterns_app import flush_write_behind
from cachepatterns_app.exceptions import WriteBehindError
from cachepatterns_app.registry import row_cache_for
from tests.support import PrivateRedis, cachepatterns, private_redis
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)

BALLAST = "ballast:"  # the test's own filler keys, outside the app's prefix


@pytest.fixture
def full() -> Iterator[PrivateRedis]:
    """A private Redis with a small maxmemory and noeviction, the cache pointed at it."""
    with (
        private_redis("--maxmemory", "64mb", "--maxmemory-policy", "noeviction") as server,
        override_settings(CACHES=server.caches(socket_timeout=5.0)),
    ):
        yield server


def reach_maxmemory(server: PrivateRedis) -> int:
    """Lower maxmemory below what the server already uses; return the bytes in use.

    Filling with data until the first OOM leaves the server just under the limit
    (the refused command's buffers are freed), so the next small write may fit;
    a limit below the current use makes every write refused, whatever the sizes.
    """
    used = int(server.client.info("memory")["used_memory"])
    server.client.config_set("maxmemory", used // 2)
    with pytest.raises(redis_py.exceptions.OutOfMemoryError):
        server.client.set(f"{BALLAST}probe", b"x")
    return used


def app_state(server: PrivateRedis) -> dict[bytes, Any]:
    """Every key but the filler, with its serialized value: what a half write would change."""
    client = server.client
    return {
        key: client.dump(key) for key in client.scan_iter(count=1000) if not key.startswith(BALLAST.encode())
    }


def policy(on_failure: str) -> Any:
    from django.conf import settings

    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "ON_CACHE_FAILURE": on_failure}
    return cachepatterns(WRITE_BEHIND=wb)


@pytest.mark.parametrize("on_failure", ["raise", "sync"])
def test_a_save_on_a_full_redis_is_all_or_nothing(full, on_failure, record):
    """
    Fault: the private Redis is past maxmemory with noeviction (the test lowers maxmemory
    below the memory in use and checks a SET is refused with OOM) when write-behind saves
    run: an update of a queued row and a new row.
    Expected: with ON_CACHE_FAILURE "raise", save() raises WriteBehindError naming the cause,
    the database untouched; with "sync", save() writes the database directly. In both cases
    no key of the app changes in Redis (no row hash without its stream entry, or the reverse).
    Once maxmemory is lifted, a flush leaves the database at what save() reported.
    Observed: raise: WriteBehindError naming maxmemory, the new row absent from the DB, every
    app key byte-identical (DUMP), the flush applied only the earlier queued state; sync: both
    rows in the DB as saved, no key written, only the updated row's older hash deleted, and the
    flush did not overwrite the synchronous write with the older queued one.
    """
    cache = row_cache_for(Counter)
    with policy(on_failure):
        queued = Counter(name="queued", views=1)
        queued.save()
        used = reach_maxmemory(full)
        before = app_state(full)
        stream_before = full.client.xlen(cache.wb_keys("default").stream)

        queued.name, queued.views = "updated while full", 2
        fresh = Counter(name="new while full", views=3)
        if on_failure == "raise":
            with pytest.raises(WriteBehindError) as raised:
                queued.save()
            with pytest.raises(WriteBehindError):
                fresh.save()
            assert "maxmemory" in str(raised.value), raised.value
            assert not models.QuerySet(Counter).filter(pk=fresh.pk).exists()
        else:
            queued.save()
            fresh.save()
            rows = dict(models.QuerySet(Counter).values_list("name", "views"))
            assert rows == {"updated while full": 2, "new while full": 3}
        after = app_state(full)
        stream_after = full.client.xlen(cache.wb_keys("default").stream)
        # Memory again: the flush must leave the database at what save() reported.
        full.client.config_set("maxmemory", 0)
        flush_write_behind(Counter)
        flushed = dict(models.QuerySet(Counter).values_list("name", "views"))
    assert stream_after == stream_before
    removed = set(before) - set(after)
    assert set(after) <= set(before), sorted(set(after) - set(before))
    assert all(after[key] == before[key] for key in after), "a key's value changed"
    if on_failure == "raise":
        assert removed == set()
        assert flushed == {"queued": 1}
    else:
        # The synchronous write drops the queued row's now older hash (a DEL, which an
        # OOM server accepts); its queued entry must not overwrite the newer row.
        assert removed <= {cache.keys(queued.pk, "default").value.encode()}
        assert flushed == {"updated while full": 2, "new while full": 3}
    record(
        maxmemory_set_to=f"{used // 2} bytes (half of used_memory)",
        app_keys_written=0,
        app_keys_deleted=len(removed),
        db_after_flush=flushed,
    )


@pytest.mark.parametrize("on_failure", ["raise", "sync"])
def test_an_incr_on_a_full_redis_is_refused_or_recorded_never_misreported(full, on_failure, record):
    """
    Fault: the private Redis is past maxmemory with noeviction when ``incr()`` runs on a
    row with an increment already queued.
    Expected: Redis refuses the script's first write, so nothing was added: with "raise",
    a WriteBehindError naming maxmemory (not "the column does not hold an integer", which
    it said before); with "sync", the increment is recorded in the database like one made
    while Redis is down. Once maxmemory is lifted, a flush leaves the exact total.
    Observed: raise: WriteBehindError naming maxmemory, the flush wrote 3 (1 + the queued 2);
    sync: incr() returned 6 (the column and the record), one record of 5, the flush wrote 8
    and deleted the record.
    """
    from cachepatterns_app.models import WriteBehindIncrement

    with policy(on_failure):
        row = Counter(name="counted", views=1)
        row.save(sync=True)
        Counter.objects.incr(row.pk, "views", 2)  # queued: 3 in Redis
        reach_maxmemory(full)
        if on_failure == "raise":
            with pytest.raises(WriteBehindError, match="maxmemory") as raised:
                Counter.objects.incr(row.pk, "views", 5)
            assert "integer" not in str(raised.value), raised.value
            expected = 3
        else:
            assert Counter.objects.incr(row.pk, "views", 5) == 6  # the column (1) + recorded (5)
            assert list(models.QuerySet(WriteBehindIncrement).values_list("amount", flat=True)) == [5]
            expected = 8
        full.client.config_set("maxmemory", 0)
        flush_write_behind(Counter)
        views = models.QuerySet(Counter).get(pk=row.pk).views
    assert views == expected
    assert not models.QuerySet(WriteBehindIncrement).exists()
    record(on_failure=on_failure, db_after_flush=views)


def test_a_recorded_increment_replayed_into_a_full_redis_waits(full):
    """
    Fault: Redis is at maxmemory when an increment recorded during an outage is replayed.
    Expected: the replay reports "wait" (the record is kept for the next flush); it said
    "dropped" before, and the flush deleted the record: an acknowledged increment lost.
    Observed: "wait" while full, "added" once memory is back, "done" when replayed again.
    """
    cache = row_cache_for(Counter)
    row = Counter(name="replayed", views=1)
    row.save(sync=True)
    Counter.objects.incr(row.pk, "views", 1)  # the row is in Redis
    reach_maxmemory(full)
    mark = (cache.wb_keys("default").increment("test-token"), 60_000)
    assert cache.replay_increment("default", row.pk, "views", 4, mark) == "wait"
    full.client.config_set("maxmemory", 0)
    assert cache.replay_increment("default", row.pk, "views", 4, mark) == "added"
    assert cache.replay_increment("default", row.pk, "views", 4, mark) == "done"


def test_an_incr_of_a_row_not_in_redis_on_a_full_redis_is_recorded(full, record):
    """
    Fault: the private Redis is past maxmemory (noeviction) when ``incr()`` runs on a row
    Redis does not hold (saved with sync=True: the script must load it first).
    Expected: the load is refused for memory before the increment was sent, so with "sync"
    it is recorded in the database (a review found "whether it added the amount is
    unknown" instead, and nothing recorded); the flush after maxmemory is lifted adds it.
    Observed: incr() returned 6 (the column and the record), one record, 6 in the database
    after the flush.
    """
    from cachepatterns_app.models import WriteBehindIncrement

    with policy("sync"):
        row = Counter(name="not in redis", views=1)
        row.save(sync=True)
        assert not full.client.exists(row_cache_for(Counter).keys(row.pk, "default").value)
        reach_maxmemory(full)
        assert Counter.objects.incr(row.pk, "views", 5) == 6
        assert models.QuerySet(WriteBehindIncrement).count() == 1
        full.client.config_set("maxmemory", 0)
        flush_write_behind(Counter)
        views = models.QuerySet(Counter).get(pk=row.pk).views
    assert views == 6
    record(db_after_flush=views)


def test_a_flush_on_a_full_redis_drains_the_queue(full, record):
    """
    Fault: the private Redis is past maxmemory (noeviction) with writes queued.
    Expected: the flush, which frees memory, runs: Redis refuses XGROUP CREATE at
    maxmemory before it would say the group exists, and a review found every flush
    stopping there. The reads and acknowledgements of the stream are allowed, and the
    flushed row's state in Redis gets its TTL.
    Observed: the queued row in the database, the stream empty, the row's state in Redis
    given its TTL (it had none: the mark clean, refused, came before the expiry).
    """
    cache = row_cache_for(Counter)
    queued = Counter(name="queued", views=1)
    queued.save()
    cache.queue("default").ensure_group()  # a flush ran before
    reach_maxmemory(full)
    flush_write_behind(Counter)
    in_db = models.QuerySet(Counter).filter(pk=queued.pk).values_list("name", flat=True).first()
    left = full.client.xlen(cache.wb_keys("default").stream)
    assert (in_db, left) == ("queued", 0)
    # The row in Redis now expires (HSET is refused at maxmemory, PEXPIRE is not): it
    # would otherwise stay, without a TTL, holding the very memory the flush should free.
    from cachepatterns_app.conf import get_settings

    ttl = full.client.pttl(cache.keys(queued.pk, "default").value)
    jitter = float(get_settings().TTL_JITTER)
    assert 0 < ttl <= 300_000 * (1 + jitter)  # Counter's ttl, jittered
    record(db_after_flush=in_db, stream_left=left, row_ttl_ms=ttl)


@pytest.mark.parametrize("refusal", ["read-only replica", "min-replicas-to-write"])
def test_a_replay_into_a_redis_refusing_writes_keeps_the_record(full, refusal, record):
    """
    Fault: Redis refuses writes for another reason than memory when a recorded increment
    is replayed: a master demoted to a replica (READONLY), or min-replicas-to-write unmet
    (NOREPLICAS).
    Expected: the replay waits and the record is kept (a review found it "dropped" and
    the record deleted: an acknowledged increment lost); once Redis takes writes again
    the replay adds it once.
    Observed: "wait" while refused, then "added", then "done".
    """
    from tests.support import _free_port

    cache = row_cache_for(Counter)
    row = Counter(name="replayed", views=1)
    row.save(sync=True)
    Counter.objects.incr(row.pk, "views", 1)  # the row is in Redis
    mark = (cache.wb_keys("default").increment("test-token"), 60_000)
    if refusal == "read-only replica":
        full.client.replicaof("127.0.0.1", _free_port())  # a master that is not there
    else:
        full.client.config_set("min-replicas-to-write", 1)
    refused = cache.replay_increment("default", row.pk, "views", 4, mark)
    if refusal == "read-only replica":
        full.client.replicaof("no", "one")
    else:
        full.client.config_set("min-replicas-to-write", 0)
    added = cache.replay_increment("default", row.pk, "views", 4, mark)
    again = cache.replay_increment("default", row.pk, "views", 4, mark)
    assert (refused, added, again) == ("wait", "added", "done")
    record(refusal=refusal, outcomes=[refused, added, again])
