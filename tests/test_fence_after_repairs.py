"""
A direct write made while Redis is unreachable *after* a flush applied its repairs
(issue 10, "an older state never wins"): a process whose circuit breaker is still open
saves or deletes a row directly (fenced for the next flush) while another process's
flush, with Redis reachable, is between its repairs and its batch, and that batch holds
a write of the row queued *before* the direct one.

Before, the flush applied the older queued write over the direct one (or brought the
deleted row back), and the fence came too late. Now the flush asks for fences with its
rows locked and applies them first. The interleaving is driven: the direct write runs
right after the flush's repairs, in the flush's own thread; "unreachable" is the
sequence Redis cannot draw for it (the fallback's real path, which fences the row).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import models

from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.models import WriteBehindFence
from cachepatterns_app.patterns.write_behind import flush as flush_module
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def unreachable(*args: Any, **kwargs: Any) -> int:
    raise CacheUnavailable("Redis is unreachable (the test's breaker is open)", unsent=True)


@pytest.mark.parametrize("direct", ["save", "delete"])
def test_a_direct_write_fenced_after_the_flushs_repairs_is_not_overwritten(direct, monkeypatch):
    cache = row_cache_for(Counter)
    row = Counter(name="first", views=1)
    row.save(sync=True)
    queued = Counter.objects.get(pk=row.pk)
    queued.name, queued.views = "queued before the direct write", 2
    queued.save()

    real_repairs = flush_module.apply_repairs
    wrote: list[str] = []

    def repairs_then_a_direct_write(*args: Any, **kwargs: Any) -> bool:
        done = real_repairs(*args, **kwargs)
        if not wrote:
            wrote.append(direct)
            with monkeypatch.context() as down:
                down.setattr(cache, "next_seq", unreachable)
                other = models.QuerySet(Counter).get(pk=row.pk)  # the other process's copy
                if direct == "save":
                    other.name, other.views = "direct", 9
                    other.save(sync=True)
                else:
                    other.delete(sync=True)
            assert models.QuerySet(WriteBehindFence).filter(label=cache.label).exists()
        return done

    monkeypatch.setattr(flush_module, "apply_repairs", repairs_then_a_direct_write)
    result = flush_model(cache, "default")
    assert wrote == [direct]
    assert (result.rows, result.stale) == (0, 1)  # the queued write lost to the direct one
    stored = models.QuerySet(Counter).filter(pk=row.pk).values_list("name", "views").first()
    assert stored == (("direct", 9) if direct == "save" else None)
    assert not models.QuerySet(WriteBehindFence).exists()
    # Reads agree with the database: Redis no longer holds the older queued state.
    if direct == "save":
        assert (Counter.objects.get(pk=row.pk).name, Counter.objects.get(pk=row.pk).views) == ("direct", 9)
    else:
        with pytest.raises(Counter.DoesNotExist):
            Counter.objects.get(pk=row.pk)


@pytest.mark.parametrize("write", ["save", "bulk_create"])
def test_a_direct_write_records_its_fence_in_its_own_transaction(write, monkeypatch):
    """Outside any transaction of the caller's: the fence commits with the row, never just after it."""
    from django.db import connection

    from cachepatterns_app.patterns.write_behind import model as model_module

    cache = row_cache_for(Counter)
    real_fence = model_module.fence_later
    inside: list[bool] = []

    def fence_later(*args: Any, **kwargs: Any) -> None:
        inside.append(connection.in_atomic_block)
        real_fence(*args, **kwargs)

    monkeypatch.setattr(model_module, "fence_later", fence_later)
    monkeypatch.setattr(cache, "next_seq", unreachable)
    assert not connection.in_atomic_block
    if write == "save":
        Counter(name="direct").save(sync=True)
    else:
        Counter.objects.bulk_create([Counter(name="bulk")])
    assert inside == [True]
    assert models.QuerySet(WriteBehindFence).filter(label=cache.label).count() == 1


def test_a_fence_that_cannot_be_recorded_does_not_undo_the_direct_write(monkeypatch, caplog):
    """The fence's insert fails in the database (here: its table is missing): the save still commits."""
    cache = row_cache_for(Counter)
    monkeypatch.setattr(cache, "next_seq", unreachable)
    monkeypatch.setattr(WriteBehindFence._meta, "db_table", "cachepatterns_no_such_table")
    row = Counter(name="direct")
    row.save(sync=True)
    assert models.QuerySet(Counter).filter(pk=row.pk, name="direct").exists()
    assert "Could not record write-behind fences" in caplog.text


def _direct_save_elsewhere(cache: Any, pk: Any, monkeypatch: Any, name: str = "direct") -> None:
    """A save(sync=True) by another process whose breaker is open (its own thread and connection)."""
    from tests.support import Worker

    def save() -> None:
        other = models.QuerySet(Counter).get(pk=pk)
        other.name, other.views = name, 9
        other.save(sync=True)

    with monkeypatch.context() as down:
        down.setattr(cache, "next_seq", unreachable)
        worker = Worker(save, "web")
        worker.start()
        worker.result()


def _a_row_with_a_queued_write() -> Counter:
    row = Counter(name="first", views=1)
    row.save(sync=True)
    queued = Counter.objects.get(pk=row.pk)
    queued.name, queued.views = "queued before the direct write", 2
    queued.save()
    return row


def test_a_waiting_flush_waits_for_another_flushs_repairs_instead_of_leaving_the_batch(monkeypatch):
    """
    A review's scenario: the batch met a fence while another flush held the repairs; the
    flush left the batch (pending until RECLAIM_IDLE) although its caller asked to wait.
    """
    import threading

    from cachepatterns_app.store import get_store

    cache = row_cache_for(Counter)
    row = _a_row_with_a_queued_write()
    lock = cache.wb_keys("default").repairs
    real_repairs = flush_module.apply_repairs
    held = threading.Event()

    def repairs(*args: Any, **kwargs: Any) -> bool:
        done = real_repairs(*args, **kwargs)
        if not held.is_set():
            held.set()
            _direct_save_elsewhere(cache, row.pk, monkeypatch)
            get_store().execute("SET", lock, "another-flush", "PX", 60_000)  # another flush's repairs
        return done

    from cachepatterns_app.patterns.write_behind import model as model_module

    real_sleep = model_module.time.sleep
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        # Only a flush that waits for the lock gets here: the other flush finishes then.
        waited.append(seconds)
        get_store().execute("DEL", lock)
        real_sleep(0)

    monkeypatch.setattr(flush_module, "apply_repairs", repairs)
    monkeypatch.setattr(model_module.time, "sleep", sleep)
    result = flush_model(cache, "default", wait_for_repairs=True)
    assert waited, "the flush did not wait for the other flush's repairs"
    assert (result.left, result.stale, result.entries) == (0, 1, 1), result
    assert cache.queue("default").length() == 0
    assert models.QuerySet(Counter).get(pk=row.pk).name == "direct"


def test_another_rows_fence_does_not_hold_up_the_batch(monkeypatch):
    """
    A review's scenario: the probe asked for any fence of the model, so direct writes of
    other rows, one per attempt, kept a batch from ever being applied.
    """
    cache = row_cache_for(Counter)
    row = _a_row_with_a_queued_write()
    bystanders = [Counter(name=f"bystander {i}") for i in range(5)]
    for bystander in bystanders:
        bystander.save(sync=True)
    real_repairs = flush_module.apply_repairs
    written: list[Any] = []

    def repairs_then_a_direct_write_elsewhere(*args: Any, **kwargs: Any) -> bool:
        done = real_repairs(*args, **kwargs)
        if len(written) < len(bystanders):
            _direct_save_elsewhere(cache, bystanders[len(written)].pk, monkeypatch, name="bystander")
            written.append(1)
        return done

    monkeypatch.setattr(flush_module, "apply_repairs", repairs_then_a_direct_write_elsewhere)
    result = flush_model(cache, "default")
    assert (result.rows, result.left) == (1, 0), result
    assert models.QuerySet(Counter).get(pk=row.pk).name == "queued before the direct write"
    assert models.QuerySet(WriteBehindFence).exists()  # the bystander's, for the next flush
