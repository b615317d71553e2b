"""
``incr()`` while Redis is unreachable (issue 10, ``ON_CACHE_FAILURE="sync"``).

An increment adds to whatever the row holds, including increments Redis has queued and
the column lacks. So it is not written to the column around Redis (the flush of the
queued state would overwrite it, and a fence would drop the queued increments); it is
recorded in the database and added to the row in Redis by the next flush, once. When
Redis may have run it (a timeout after it was sent), it is not recorded at all: that
would count it twice. Real Redis (the suite's, or a private one that is paused), real
database.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.db import models
from django.test import override_settings

from cachepatterns_app import flush_write_behind, invalidation, tasks
from cachepatterns_app.exceptions import CacheUnavailable, WriteBehindError
from cachepatterns_app.models import WriteBehindFence, WriteBehindIncrement
from cachepatterns_app.patterns.write_behind import model as wb_model
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.patterns.write_behind.model import apply_increments
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store
from tests.support import Worker, cachepatterns, private_redis
from tests.testapp.models import Counter, Tally

pytestmark = pytest.mark.django_db(transaction=True)


def column(pk: Any, name: str = "views") -> Any:
    return models.QuerySet(Counter).values_list(name, flat=True).get(pk=pk)


def recorded() -> list[tuple[str, str, int]]:
    return list(
        models.QuerySet(WriteBehindIncrement).values_list("pk_text", "field", "amount").order_by("id")
    )


class open_breaker:
    """Hold this process's circuit breaker open: every Redis call is refused unsent."""

    def __enter__(self) -> None:
        breaker = get_store().breaker
        breaker.cooldown = 3600.0
        for _ in range(breaker.threshold):
            breaker.failure(ConnectionError("held open by the test"))
        assert breaker.state == "open"

    def __exit__(self, *exc: object) -> None:
        get_store().breaker.success()


def flushed_counter(views: int = 0) -> Counter:
    counter = Counter(name="counted", views=views)
    counter.save()
    flush_write_behind(Counter)
    assert column(counter.pk) == views
    return counter


def test_an_increment_refused_by_redis_is_recorded_then_added_once_with_the_queued_ones():
    counter = flushed_counter()
    for _ in range(3):
        Counter.objects.incr(counter.pk, "views", 1)  # queued: Redis 3, the column 0
    with open_breaker():
        # What the database knows: the column (0) and what was recorded (5).
        assert Counter.objects.incr(counter.pk, "views", 5) == 5
        assert column(counter.pk) == 0, "not written around the queue"
        assert recorded() == [(str(counter.pk), "views", 5)]
        assert not WriteBehindFence.objects.exists(), "a fence would drop the three queued increments"
    flush_write_behind(Counter)
    assert column(counter.pk) == 8
    assert Counter.objects.get(pk=counter.pk).views == 8
    assert recorded() == []


def test_an_increment_of_a_clean_row_reaches_redis_and_the_database():
    counter = flushed_counter(views=2)
    assert Counter.objects.get(pk=counter.pk).views == 2  # in Redis now, clean
    with open_breaker():
        assert Counter.objects.incr(counter.pk, "views", 1) == 3
        assert Counter.objects.incr(counter.pk, "likes", 2) == 2
    flush_write_behind(Counter)
    assert (column(counter.pk), column(counter.pk, "likes")) == (3, 2)
    got = Counter.objects.get(pk=counter.pk)
    assert (got.views, got.likes) == (3, 2)


def test_a_save_fenced_during_the_outage_and_an_increment_both_stand():
    # The fence drops what Redis queued before the direct save; the increment, recorded
    # after it, is added afterwards, to the row as the save left it.
    counter = flushed_counter(views=1)
    counter.views = 4
    counter.save()  # queued
    with open_breaker():
        counter.name = "saved during the outage"
        counter.views = 10
        counter.save()  # written directly, fenced
        assert Counter.objects.incr(counter.pk, "views", 1) == 11
    flush_write_behind(Counter)
    assert (column(counter.pk, "name"), column(counter.pk)) == ("saved during the outage", 11)


def test_a_replay_interrupted_before_its_record_is_deleted_adds_the_increment_once(monkeypatch):
    from django.db import DatabaseError

    counter = flushed_counter()
    with open_breaker():
        Counter.objects.incr(counter.pk, "views", 7)
    cache = row_cache_for(Counter)
    real_delete = models.QuerySet.delete

    def crash(query: Any) -> Any:
        if query.model is WriteBehindIncrement:
            raise DatabaseError("the worker died after the replay, before the deletion")
        return real_delete(query)

    with monkeypatch.context() as dying:
        dying.setattr(models.QuerySet, "delete", crash)
        with pytest.raises(DatabaseError):
            apply_increments(cache, "default")
    assert recorded() == [(str(counter.pk), "views", 7)]
    assert Counter.objects.get(pk=counter.pk).views == 7  # added in Redis once
    flush_write_behind(Counter)  # replays it again: the mark says it was added
    assert recorded() == []
    assert column(counter.pk) == 7
    from cachepatterns_app.patterns.write_behind.model import INCREMENT_MARK_MS

    # The mark outlives its record (a flush whose lock lapsed may still replay it), not for good.
    [mark] = get_store().client.scan_iter(match=cache.wb_keys("default").increment("*"))
    assert 0 < get_store().client.pttl(mark) <= INCREMENT_MARK_MS


def test_an_id_used_again_is_a_new_increment():
    # The mark is named by a random token, not by the id: an id counter reset
    # (TRUNCATE, a restore) must not make a new increment look replayed.
    counter = flushed_counter()
    with open_breaker():
        Counter.objects.incr(counter.pk, "views", 1)
    [first] = models.QuerySet(WriteBehindIncrement).all()
    flush_write_behind(Counter)
    with open_breaker():
        Counter.objects.incr(counter.pk, "views", 2)
    models.QuerySet(WriteBehindIncrement).update(id=first.id)
    flush_write_behind(Counter)
    assert column(counter.pk) == 3


def test_two_flushes_at_once_apply_a_fence_once(monkeypatch, caplog):
    """
    Flush B applies the outage's fence; flush A, started meanwhile, waits for it instead
    of applying the same fence again (a second, newer sequence would make the increment
    B replays stale, and its record is gone by then).
    """
    import logging
    import threading

    from cachepatterns_app.patterns.write_behind import model as wb_model
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from tests.support import Worker

    counter = flushed_counter(views=1)
    with open_breaker():
        counter.views = 10
        counter.save()  # written directly, fenced
        assert Counter.objects.incr(counter.pk, "views", 5) == 15  # recorded
    cache = row_cache_for(Counter)
    b_applying, a_waiting = threading.Event(), threading.Event()
    store = get_store()
    real_script, real_time = store.script, wb_model.time

    def script(name: str, keys: Any, args: Any = ()) -> Any:
        # Flush B inside its fence batch (reading where the fence's line falls).
        if name == "wb_seq_before" and threading.current_thread().name == "flush-b":
            b_applying.set()
            assert a_waiting.wait(30), "flush A did not wait for flush B's repairs"
        return real_script(name, keys, args)

    class Clock:
        monotonic = staticmethod(real_time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            a_waiting.set()
            real_time.sleep(seconds)

    monkeypatch.setattr(store, "script", script)
    monkeypatch.setattr(wb_model, "time", Clock)
    with caplog.at_level(logging.WARNING, "cachepatterns_app"):
        b = Worker(lambda: flush_model(cache, "default"), name="flush-b")
        b.start()
        assert b_applying.wait(30), "flush B did not reach the fence"
        flush_model(cache, "default")  # flush A
        b.result()
    monkeypatch.undo()
    flush_write_behind(Counter)
    applied = [r for r in caplog.records if "write-behind fence(s)" in r.getMessage()]
    assert len(applied) == 1, [r.getMessage() for r in applied]
    assert recorded() == []
    assert column(counter.pk) == 15


def test_every_fence_is_applied_before_an_increment_is_replayed():
    """
    More fences than one batch takes: the increment waits for all of them. Replayed onto
    the row's state from before the outage (the direct save's invalidation waits in
    another process), a later fence would drop it, or the flush would write that old
    state over the direct save.
    """
    from cachepatterns_app import invalidation, store
    from cachepatterns_app.patterns.write_behind.model import REPAIR_BATCH, fence_later

    cache = row_cache_for(Counter)
    counter = Counter(id=uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"), name="before", views=1)
    counter.save()
    flush_write_behind(Counter)
    counter.views = 4
    counter.save()  # queued: Redis holds ("before", 4)
    with open_breaker():
        # What an update() of a batch of other rows records (rows since deleted); then the row.
        fence_later(cache, "default", [uuid.UUID(int=i + 1) for i in range(REPAIR_BATCH)])
        counter.name = "saved during the outage"
        counter.views = 10
        counter.save()  # written directly, fenced after them
        assert Counter.objects.incr(counter.pk, "views", 1) == 11
    # The flush runs in a worker: it has none of this process's unsent invalidations.
    with invalidation._failed_lock:
        invalidation._failed.clear()
    store.reset()
    flush_write_behind(Counter)
    assert not WriteBehindFence.objects.exists()
    assert recorded() == []
    assert (column(counter.pk, "name"), column(counter.pk)) == ("saved during the outage", 11)


def test_one_record_that_cannot_be_replayed_does_not_stop_the_models_flush(monkeypatch, caplog):
    # The row's state in Redis has another layout (a previous deploy's dirty row): the
    # replay cannot load it, and the record waits; the rest of the model is flushed.
    import logging

    cache = row_cache_for(Counter)
    old, other = flushed_counter(views=1), flushed_counter(views=1)
    with monkeypatch.context() as previous_deploy:
        previous_deploy.setattr(cache.codec, "fingerprint", "0123456789")
        old.views = 2
        old.save()  # queued in the old layout
    with open_breaker():
        Counter.objects.incr(old.pk, "views", 1)
    other.name = "queued after the outage"
    other.save()
    with caplog.at_level(logging.WARNING, "cachepatterns_app"):
        flush_write_behind(Counter)
    assert column(other.pk, "name") == "queued after the outage"
    assert recorded() == [(str(old.pk), "views", 1)], "kept for a later flush"
    assert any("is not added yet" in r.getMessage() for r in caplog.records)


def test_an_increment_of_a_row_the_database_lacks_is_refused_and_recorded_nowhere():
    queued = Counter(name="only in Redis")
    queued.save()
    with open_breaker(), pytest.raises(WriteBehindError, match=r"no such row.*Nothing was recorded"):
        Counter.objects.incr(queued.pk, "views", 1)
    assert recorded() == []


def test_with_raise_an_increment_refused_by_redis_raises_and_records_nothing():
    from django.conf import settings

    counter = flushed_counter()
    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "ON_CACHE_FAILURE": "raise"}
    with cachepatterns(WRITE_BEHIND=wb), open_breaker(), pytest.raises(WriteBehindError, match="Nothing"):
        Counter.objects.incr(counter.pk, "views", 1)
    assert recorded() == []
    assert column(counter.pk) == 0


def _wait_for(predicate: Any, what: str) -> None:
    import time

    deadline = time.monotonic() + 30.0  # generous: only a broken server takes this long
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_an_increment_whose_reply_was_lost_is_not_recorded_and_counts_once():
    # A paused Redis has the script in its socket buffer and runs it when it resumes:
    # the caller cannot know whether it ran, so nothing may be recorded besides it.
    with private_redis() as server, override_settings(CACHES=server.caches(socket_timeout=0.5)):
        counter = flushed_counter()
        Counter.objects.incr(counter.pk, "views", 1)
        queue = row_cache_for(Counter).queue("default")
        assert queue.length() == 1
        server.pause()
        try:
            with pytest.raises(WriteBehindError, match="whether it added the amount is unknown"):
                Counter.objects.incr(counter.pk, "views", 4)
        finally:
            server.resume()
        get_store().breaker.success()
        _wait_for(lambda: queue.length() == 2, "the resumed server to run the increment")
        assert recorded() == []
        flush_write_behind(Counter)
        assert column(counter.pk) == 5


def test_unsent_says_only_what_is_known_not_to_have_reached_redis():
    store = get_store()
    with open_breaker(), pytest.raises(CacheUnavailable) as refused:
        store.script("wb_seq", (row_cache_for(Counter).wb_keys("default").seq,), ())
    assert refused.value.unsent
    with private_redis() as server, override_settings(CACHES=server.caches(socket_timeout=0.5)):
        paused = get_store()
        key = row_cache_for(Counter).wb_keys("default").seq
        paused.script("wb_seq", (key,), ())  # a connection in the pool, then a hung server
        server.pause()
        try:
            with pytest.raises(CacheUnavailable) as timed_out:
                paused.script("wb_seq", (key,), ())
        finally:
            server.resume()
        assert not timed_out.value.unsent
        paused.breaker.success()
        direct = paused._direct(paused.client) is not None
        server.stop()
        with pytest.raises(CacheUnavailable) as refused_connection:
            paused.script("wb_seq", (key,), ())
        # A connection that cannot be made is known unsent on the direct script path;
        # through redis-py's own (a cluster, redis-py < 8) only the breaker's refusal is.
        assert refused_connection.value.unsent is direct


# -- a second review's scenarios (the repair lock, fences recorded meanwhile, the beat tasks) --


def test_a_lapsed_repair_lock_does_not_add_a_recorded_increment_twice(monkeypatch):
    """
    Flush A replays a record (its mark is set) and outlives REPAIR_LOCK_MS before it
    deletes the record; flush B takes the lapsed lock and reads the record. A then deletes
    the record and DELs the mark (new in 567a3f7); B replays the record: no mark, so it is
    added a second time. (Nothing checks that the holder still holds the lock, and the
    mark, which made a second replay harmless before, is gone.)
    """
    counter = flushed_counter()
    with open_breaker():
        assert Counter.objects.incr(counter.pk, "views", 7) == 7
    cache = row_cache_for(Counter)
    lock = cache.wb_keys("default").repairs
    real_replay = cache.replay_increment
    a_replayed, b_read = threading.Event(), threading.Event()
    holder: dict[str, Worker] = {}

    def replay(*args: Any) -> str:
        if threading.current_thread().name == "flush-a":
            outcome = real_replay(*args)
            a_replayed.set()
            assert b_read.wait(30), "flush B did not read the record"
            return outcome
        # Flush B: it has read the record while A still had it; A finishes meanwhile.
        b_read.set()
        holder["a"].result()
        return real_replay(*args)

    monkeypatch.setattr(cache, "replay_increment", replay)
    holder["a"] = Worker(lambda: flush_model(cache, "default"), name="flush-a")
    holder["a"].start()
    assert a_replayed.wait(30)
    get_store().client.delete(lock)  # REPAIR_LOCK_MS is over: the key expires
    flush_model(cache, "default")  # flush B
    monkeypatch.undo()
    flush_write_behind(Counter)
    assert recorded() == []
    assert column(counter.pk) == 7, "the recorded increment was added twice"


def test_a_fence_recorded_during_the_repairs_before_an_increment_still_comes_first(monkeypatch):
    """
    While the flush applies the fences, a process whose breaker is still open saves a
    row directly (a fence the flush's fence batch did not see) and then increments it
    (a record the increment batch does see). The increment is replayed onto the row's
    state from before the outage, queued with a new sequence, and flushed over the direct
    save; the late fence, applied by the next flush, then drops what is left in Redis.
    """
    other = flushed_counter()
    row = flushed_counter(views=1)
    row.name, row.views = "before the outage", 4
    row.save()  # queued: Redis holds ("before the outage", 4)
    with open_breaker():
        Counter.objects.incr(other.pk, "views", 1)  # something for the flush to repair
    real_fences = wb_model.apply_fences
    calls = []

    def apply_fences(c: Any, using: str) -> int:
        n = real_fences(c, using)
        if not calls:
            # The fence batch is done; another process, its breaker still open, writes now.
            with open_breaker():
                row.name, row.views = "saved directly", 10
                row.save()  # written directly, fenced
                assert Counter.objects.incr(row.pk, "views", 1) == 11  # recorded
            # That process's invalidation of its save waits in that process, not in this one.
            with invalidation._failed_lock:
                invalidation._failed.clear()
        calls.append(n)
        return n

    monkeypatch.setattr(wb_model, "apply_fences", apply_fences)
    flush_write_behind(Counter)
    monkeypatch.undo()
    assert calls, "the flush applied no repairs"
    flush_write_behind(Counter)  # the late fence
    assert not WriteBehindFence.objects.exists()
    assert (column(row.pk, "name"), column(row.pk)) == ("saved directly", 11)


def test_a_save_queued_after_redis_is_back_survives_the_outage_fence():
    """
    A fence used to be applied with a sequence drawn by the next flush, so every write
    queued between Redis coming back and that flush was older than it: skipped, and its
    state dropped. The line is the fence's time now.
    """
    counter = flushed_counter(views=1)
    with open_breaker():
        counter.name = "saved during the outage"
        counter.save()  # written directly, fenced
    # Redis is back (the breaker closed); before the beat's flush, two ordinary writes.
    counter.name = "saved after the outage"
    counter.save()
    Counter.objects.incr(counter.pk, "views", 1)
    flush_write_behind(Counter)
    assert (column(counter.pk, "name"), column(counter.pk)) == ("saved after the outage", 2)


def _hold_the_repair_lock_elsewhere(monkeypatch: Any, cache: Any) -> None:
    """Another live flush holds the repairs of ``cache``; this process's clock runs fast."""
    get_store().client.set(cache.wb_keys("default").repairs, "another flush", px=3_600_000)
    now = [0.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

        @staticmethod
        def sleep(seconds: float) -> None:
            now[0] += 1.0  # a second per poll: the 2 x TTL wait is over in 121 polls

    monkeypatch.setattr(wb_model, "time", Clock)


def test_one_model_under_repair_does_not_stop_the_beat_flush_of_the_others(monkeypatch):
    """
    The beat's ``cachepatterns.flush_write_behind`` (every model) waits 2 x REPAIR_LOCK_MS
    (two minutes of a worker) behind another flush's repairs, then raises
    WriteBehindError, which neither the task nor operations.flush catches: every model
    after the one under repair is skipped, run after run, for as long as the repair lasts.
    """
    from cachepatterns_app.patterns.write_behind.operations import caches

    order = [c.model for c in caches()]
    assert order.index(Counter) < order.index(Tally), order
    counter = flushed_counter()
    with open_breaker():
        Counter.objects.incr(counter.pk, "views", 1)
    Tally(key="queued", label="queued meanwhile").save()
    _hold_the_repair_lock_elsewhere(monkeypatch, row_cache_for(Counter))
    task = tasks.flush_write_behind.apply()
    assert task.successful(), repr(task.result)
    assert models.QuerySet(Tally).filter(pk="queued").exists(), "another model's flush was skipped"


def test_one_model_under_repair_does_not_stop_reclaim_pending_of_the_others(monkeypatch):
    """reclaim_pending catches CacheUnavailable only: the repair lock's WriteBehindError ends it."""
    from cachepatterns_app.patterns.write_behind.operations import caches

    order = [c.model for c in caches()]
    assert order.index(Counter) < order.index(Tally), order
    counter = flushed_counter()
    with open_breaker():
        Counter.objects.incr(counter.pk, "views", 1)
    tally_cache = row_cache_for(Tally)
    reached = []
    real = tally_cache.queue

    def queue(using: str) -> Any:
        reached.append(using)
        return real(using)

    monkeypatch.setattr(tally_cache, "queue", queue)
    _hold_the_repair_lock_elsewhere(monkeypatch, row_cache_for(Counter))
    task = tasks.reclaim_pending.apply()
    assert task.successful(), repr(task.result)
    assert reached, "reclaim_pending never reached the models after the one under repair"


def _next_millisecond() -> None:
    """Return once the clock is in a later millisecond (the fence's line is drawn by time)."""
    import time

    start = int(time.time() * 1000)
    while int(time.time() * 1000) <= start + 1:
        pass


def save_directly(counter: Counter, name: str) -> None:
    """Save ``counter`` as ``name`` while this process's breaker is open: a direct write, fenced."""
    with open_breaker():
        counter.name = name
        counter.save()


def test_a_row_written_directly_twice_keeps_the_later_direct_write():
    # D1 (direct), W (queued by a process that reaches Redis), D2 (direct): the fence
    # carries D2's time, so W, queued before it, loses to D2; D1 alone would let W win.
    counter = flushed_counter(views=1)
    save_directly(counter, "first direct write")
    _next_millisecond()
    other = Counter.objects.get(pk=counter.pk)
    other.name = "queued in between"
    other.save()
    _next_millisecond()
    save_directly(counter, "second direct write")
    _next_millisecond()
    flush_write_behind(Counter)
    assert column(counter.pk, "name") == "second direct write"
    assert Counter.objects.get(pk=counter.pk).name == "second direct write"


def test_a_write_queued_after_the_direct_one_wins_and_one_before_loses():
    counter = flushed_counter(views=1)
    counter.name = "queued before the outage"
    counter.save()
    _next_millisecond()
    save_directly(counter, "written directly")
    assert column(counter.pk, "name") == "written directly"
    _next_millisecond()
    flush_write_behind(Counter)  # the fence: the write queued before it is skipped
    assert column(counter.pk, "name") == "written directly"
    assert Counter.objects.get(pk=counter.pk).name == "written directly"
    save_directly(counter, "written directly again")
    _next_millisecond()
    Counter.objects.incr(counter.pk, "views", 1)  # after Redis is back: it wins
    flush_write_behind(Counter)
    assert (column(counter.pk, "name"), column(counter.pk)) == ("written directly again", 2)
