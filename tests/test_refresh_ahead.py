"""
``@refresh_ahead`` against the real Redis and a real Celery worker process.

Every claim is proven by what happened, not by how long it took: loader runs are
counted in Redis by whichever process ran them, refreshes by the counters the
worker ships, and the interleavings (a write while a refresh runs) are driven by a
flag in Redis that holds the worker's loader until the test lets it go. Only the
TTL-period test is about time by nature; it asserts counts (one miss, loads per
period), never durations.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cachepatterns_app.patterns.refresh_ahead.worker import drain
from tests.celery_app import app as celery_app
from tests.ra_support import calls, flag, keys_of, shared_counts, wait_filled, worker_count
from tests.refreshapp.models import Headline
from tests.refreshapp.refreshers import owner_titles, steady, wide
from tests.support import PATIENCE, Worker, family_keys, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

assert celery_app  # the suite's Celery app is the current one: tasks go to the suite's broker

WIDE = "ra:wide:{item}"


def enter_window(redis: Any, key: str, ms: int = 10_000) -> None:
    """Shorten a 60 s key's life to ``ms``: inside its 12 s refresh window, far from expiry."""
    assert redis.pexpire(key, ms)


def test_steady_reads_over_five_ttl_periods_miss_only_once(celery_worker, redis, counts):
    label = "ra:steady:{item}"
    first = steady("hot")  # the one synchronous miss
    assert first["n"] == 1
    seen: set[int] = set()
    reads = [0]
    lock = threading.Lock()
    started = time.monotonic()
    stop = started + 5 * 2.0  # five periods of the 2 s TTL

    def reader() -> None:
        while time.monotonic() < stop:
            value = steady("hot")
            with lock:
                seen.add(value["n"])
                reads[0] += 1
            time.sleep(0.01)

    threads = [Worker(reader, name=f"reader-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.result(timeout=PATIENCE + 10)
    elapsed = time.monotonic() - started

    drain()  # what the readers scheduled has reached the broker
    mine = counts(label)
    assert mine["miss"] == 1, mine  # no synchronous miss after the first
    loads = calls(redis, "steady")
    # No read missed, and no value lives longer than its TTL plus jitter (2.2 s): a value
    # was stored at least once per period. A refresh is due only in the last half of the
    # nominal TTL of a value that lives at least 1.8 s, so at most one per 0.8 s.
    assert loads >= 1 + int(elapsed // 2.2), (loads, elapsed)
    assert loads <= 2 + int(elapsed // 0.8), (loads, elapsed)
    # Once per period, not once per reader: each of the loads served many reads.
    assert reads[0] >= 10 * loads, (reads[0], loads)
    assert len(seen) >= 1 + int(elapsed // 2.2)  # the readers saw the refreshed values
    assert mine.get("refresh_scheduled", 0) == loads - 1


def test_a_hundred_readers_entering_the_window_schedule_one_refresh(celery_worker, redis, counts):
    keys = keys_of(wide, item="crowd")
    assert wide("crowd")["n"] == 1
    wait_filled(redis, keys)
    enter_window(redis, keys.value)
    # The refresh waits until every reader has read: then all of them read while it was due.
    redis.set(flag("hold", "wide"), 1)
    barrier = threading.Barrier(100)

    def read() -> Any:
        barrier.wait(PATIENCE)
        return wide("crowd")

    readers = [Worker(read, name=f"reader-{i}") for i in range(100)]
    for reader in readers:
        reader.start()
    values = [reader.result(timeout=2 * PATIENCE) for reader in readers]

    assert all(value["n"] == 1 for value in values)  # every reader got the cached value at once
    drain()
    mine = counts(WIDE)
    assert mine["stale_served"] == 100
    assert mine["refresh_scheduled"] == 1  # one reader took the refresh lease
    assert wait_until(lambda: redis.exists(flag("entered", "wide"))), "the refresh never started"
    redis.delete(flag("hold", "wide"))
    assert worker_count(WIDE, "refresh_done") == 1
    assert wait_until(lambda: wide("crowd")["n"] == 2)
    assert calls(redis, "wide") == 2  # the miss, and the one refresh the worker ran
    assert shared_counts(WIDE).get("refresh_done") == 1
    assert redis.pttl(keys.value) > 12_000  # fresh again: out of the window


def test_a_failing_refresh_keeps_the_old_value_then_the_next_one_replaces_it(celery_worker, redis, counts):
    keys = keys_of(wide, item="flaky")
    assert wide("flaky")["n"] == 1
    wait_filled(redis, keys)
    redis.set(flag("fail", "wide"), 1)
    enter_window(redis, keys.value, 11_000)

    assert wide("flaky")["n"] == 1  # served at once; the refresh is scheduled
    assert worker_count(WIDE, "refresh_failed") == 1
    # The failure is remembered beside the value, and the lease now holds readers off.
    assert redis.get(keys.meta).endswith(b",1")
    assert redis.get(keys.lease) == b"b:1"
    for _ in range(20):
        assert wide("flaky")["n"] == 1  # stale-if-error: the old value, never an exception
    drain()
    assert counts(WIDE)["refresh_scheduled"] == 1  # nobody retried during the backoff

    redis.delete(flag("fail", "wide"))
    assert wait_until(lambda: wide("flaky")["n"] == 3), wide("flaky")  # 2 was the failed load
    assert worker_count(WIDE, "refresh_done") == 1  # its counts ship when its task ends
    assert shared_counts(WIDE)["refresh_failed"] == 1
    assert b"," not in redis.get(keys.meta)  # failures forgotten once a refresh succeeded
    assert counts(WIDE)["miss"] == 1


def test_an_invalidation_while_a_refresh_runs_discards_its_result(celery_worker, redis, counts):
    keys = keys_of(wide, item="raced")
    assert wide("raced")["n"] == 1
    wait_filled(redis, keys)
    redis.set(flag("hold", "wide"), 1)
    enter_window(redis, keys.value)
    assert wide("raced")["n"] == 1
    assert wait_until(lambda: redis.exists(flag("entered", "wide"))), "the refresh never started"

    wide.invalidate(item="raced")  # the loader has started: its result predates this write
    redis.delete(flag("hold", "wide"))

    assert worker_count(WIDE, "refresh_skipped") == 1
    assert not redis.exists(keys.value)  # the refresh did not store what it computed
    assert shared_counts(WIDE).get("refresh_done", 0) == 0
    assert wide("raced")["n"] == 3  # the next read misses and computes afresh
    assert counts(WIDE)["miss"] == 2


def test_a_write_during_a_refresh_of_a_family_member_means_a_miss_not_a_stale_refresh(
    celery_worker, redis, counts
):
    label = "ra:owner:{owner}:titles"
    Headline.objects.create(owner=7, title="first")
    assert owner_titles(7)["titles"] == ["first"]
    family = family_keys("ra:owner:7")
    assert wait_until(lambda: redis.get(family.generation))
    generation = redis.get(family.generation).decode()
    value_key, _ = family.member(generation, "ra:owner:7:titles")
    assert wait_until(lambda: redis.exists(value_key))
    redis.set(flag("hold", "owner_titles"), 1)
    enter_window(redis, value_key)
    assert owner_titles(7)["titles"] == ["first"]
    assert wait_until(lambda: redis.exists(flag("entered", "owner_titles"))), "the refresh never started"

    # A write the worker's load may not have seen: depends_on bumps the generation at commit.
    Headline.objects.create(owner=7, title="second")
    redis.delete(flag("hold", "owner_titles"))

    assert worker_count(label, "refresh_skipped") == 1
    assert redis.get(family.generation).decode() != generation
    assert owner_titles(7)["titles"] == ["first", "second"]  # a miss, computed after the write
    assert counts(label)["miss"] == 2


def test_a_read_inside_a_transaction_schedules_after_the_commit(celery_worker, redis, counts):
    from django.db import transaction

    keys = keys_of(wide, item="atomic")
    assert wide("atomic")["n"] == 1
    wait_filled(redis, keys)
    enter_window(redis, keys.value)
    with transaction.atomic():
        assert wide("atomic")["n"] == 1
        drain()
        assert counts(WIDE).get("refresh_scheduled", 0) == 0  # not enqueued inside the transaction
    drain()
    assert counts(WIDE)["refresh_scheduled"] == 1
    assert worker_count(WIDE, "refresh_done") == 1


def test_an_unknown_function_name_is_logged_and_crashes_nothing(celery_worker):
    from cachepatterns_app.tasks import refresh_key

    kwargs = {"name": "nowhere.missing", "params": {"x": 1}, "using": "default", "token": "r:abc"}
    result = refresh_key.apply_async(kwargs=kwargs, queue=celery_worker.queue).get(timeout=PATIENCE)
    assert result == "failed"
    assert wait_until(lambda: "no @refresh_ahead function named 'nowhere.missing'" in celery_worker.output())
    # The worker is still there and refreshes what it knows.
    from tests.celery_app import ping

    assert ping.apply_async(queue=celery_worker.queue).get(timeout=PATIENCE) == "pong"
