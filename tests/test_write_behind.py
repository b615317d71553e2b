"""
Write-behind (issue 10): a save is one Redis round trip that stores the row's new
state and queues it durably; reads see the queued write; the flush applies writes to
the database in batches, coalesced, ordered per row, idempotent, acknowledged only
after the commit. Real Redis, real database, real commits.
"""

from __future__ import annotations

import decimal
import uuid
from typing import Any

import pytest
from django.db import connection, models, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside, flush_write_behind
from cachepatterns_app.exceptions import WriteBehindError
from cachepatterns_app.models import WriteBehindTombstone
from cachepatterns_app.patterns.write_behind import operations
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.patterns.write_behind.queue import Entry
from cachepatterns_app.registry import row_cache_for
from tests.support import cachepatterns, private_redis, settle, traffic_to
from tests.testapp.models import Counter, Tally, Visit

pytestmark = pytest.mark.django_db(transaction=True)


def in_db(model: type[models.Model], pk: Any) -> Any:
    return models.QuerySet(model).filter(pk=pk).first()


def queries(fn: Any) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return len(ctx.captured_queries), value


def cache(model: type[models.Model]) -> Any:
    return row_cache_for(model)


def stream_length(model: type[models.Model]) -> int:
    return cache(model).queue("default").length()


# -- saving, reading, flushing -------------------------------------------------------------------


def test_a_save_is_queued_seen_by_reads_and_in_the_database_after_the_flush():
    counter = Counter(name="home", views=3)
    n, _ = queries(counter.save)
    assert n == 0, "a write-behind save runs no SQL"
    assert in_db(Counter, counter.pk) is None
    assert stream_length(Counter) == 1
    n, got = queries(lambda: Counter.objects.get(pk=counter.pk))
    assert (n, got.name, got.views) == (0, "home", 3)
    assert flush_write_behind(Counter) == 1
    stored = in_db(Counter, counter.pk)
    assert (stored.name, stored.views) == ("home", 3)
    assert stored.wb_seq == counter.wb_seq > 0
    assert stream_length(Counter) == 0
    n, got = queries(lambda: Counter.objects.get(pk=counter.pk))
    assert (n, got.views) == (0, 3)  # the flushed row stays cached, clean


def test_a_save_is_one_round_trip_to_redis():
    with private_redis() as server, cachepatterns(), _caches(server):
        counter = Counter(name="one trip")
        counter.save()  # loads the scripts once
        counter.views = 1
        with traffic_to(server.port) as traffic:
            counter.save()
        assert (traffic.sends, traffic.replies) == (1, 1), traffic


def test_what_a_queued_save_stores_is_what_the_database_holds():
    counter = Counter(name="round", price=decimal.Decimal("0.125"))
    counter.save()
    queued = Counter.objects.get(pk=counter.pk)
    flush_write_behind(Counter)
    fresh = in_db(Counter, counter.pk)
    for field in Counter._meta.concrete_fields:
        a, b = getattr(queued, field.attname), getattr(fresh, field.attname)
        assert (a, type(a)) == (b, type(b)), field.name
    assert str(queued.price) == str(fresh.price)
    assert queued.touched is not None


def test_repeated_saves_of_a_row_are_coalesced_into_one_write():
    counter = Counter(name="v0")
    for i in range(1, 6):
        counter.name = f"v{i}"
        counter.save()
    assert stream_length(Counter) == 5
    result = flush_model(cache(Counter), "default")
    assert (result.rows, result.entries) == (1, 5)
    assert in_db(Counter, counter.pk).name == "v5"


def test_save_with_update_fields_merges_into_the_queued_state():
    counter = Counter(name="a", views=1, likes=1)
    counter.save()
    flush_write_behind(Counter)
    stale = models.QuerySet(Counter).get(pk=counter.pk)
    stale.likes = 99
    stale.views = 7
    stale.save(update_fields=["views"])  # likes=99 stays in memory only
    got = Counter.objects.get(pk=counter.pk)
    assert (got.views, got.likes) == (7, 1)
    flush_write_behind(Counter)
    assert (in_db(Counter, counter.pk).views, in_db(Counter, counter.pk).likes) == (7, 1)


def test_incr_is_atomic_in_redis_and_state_based_in_the_database():
    counter = Counter(name="c")
    counter.save()
    assert [Counter.objects.incr(counter.pk, "views", 2) for _ in range(3)] == [2, 4, 6]
    assert Counter.objects.get(pk=counter.pk).views == 6
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk).views == 6


def test_incr_of_a_row_only_in_the_database_loads_it_first():
    counter = Counter(name="c", views=10)
    counter.save(sync=True)
    assert Counter.objects.incr(counter.pk, "views", 5) == 15
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk).views == 15


def test_incr_refuses_what_is_not_an_integer_column():
    counter = Counter(name="c")
    counter.save()
    with pytest.raises(WriteBehindError, match="not an integer column"):
        Counter.objects.incr(counter.pk, "name", 1)
    with pytest.raises(WriteBehindError, match="must be an int"):
        Counter.objects.incr(counter.pk, "views", 1.5)  # type: ignore[arg-type]


def test_a_queued_delete_is_seen_at_once_and_applied_by_the_flush():
    counter = Counter(name="gone")
    counter.save(sync=True)
    counter.delete()
    assert in_db(Counter, counter.pk) is not None
    with CaptureQueriesContext(connection) as ctx, pytest.raises(Counter.DoesNotExist):
        Counter.objects.get(pk=counter.pk)
    assert len(ctx.captured_queries) == 0
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk) is None
    assert WriteBehindTombstone.objects.filter(label="testapp.counter").count() == 1


def test_expressions_are_refused_with_a_pointer_to_incr_or_sync():
    counter = Counter(name="x")
    counter.save()
    counter.views = F("views") + 1
    with pytest.raises(WriteBehindError, match=r"incr\(pk, field, n\).*save\(sync=True\)"):
        counter.save()
    assert stream_length(Counter) == 1, "nothing more was queued"


def test_a_value_the_database_would_refuse_is_refused_before_queueing():
    with pytest.raises(WriteBehindError, match="NOT NULL"):
        Counter(name=None).save()
    with pytest.raises(WriteBehindError, match="max_length"):
        Counter(name="x" * 51).save()
    assert stream_length(Counter) == 0


def test_a_model_whose_database_assigns_the_key_creates_synchronously():
    visit = Visit(page="/")
    visit.save()
    assert visit.pk is not None
    assert in_db(Visit, visit.pk).page == "/"
    visit.hits = 5
    visit.save()
    assert in_db(Visit, visit.pk).hits == 0
    assert Visit.objects.get(pk=visit.pk).hits == 5
    flush_write_behind(Visit)
    assert in_db(Visit, visit.pk).hits == 5


def test_flushed_gives_queries_that_see_queued_writes():
    for name in ("a", "b", "c"):
        Counter(name=name, views=1).save()
    assert models.QuerySet(Counter).count() == 0
    assert Counter.objects.flushed().filter(views=1).count() == 3


# -- ordering: an older state never wins ----------------------------------------------------


def test_a_redelivered_batch_changes_nothing():
    counter = Counter(name="first")
    counter.save()
    entries = cache(Counter).queue("default").read_new("test", 10)
    result = flush_model(cache(Counter), "default")
    assert result.rows == 0  # the entry was delivered to "test", not to this consumer
    from cachepatterns_app.patterns.write_behind.flush import _apply_entries

    queue = cache(Counter).queue("default")
    first = _apply_entries(cache(Counter), "default", queue, entries)
    counter.name = "second"
    counter.save()
    flush_model(cache(Counter), "default")
    assert in_db(Counter, counter.pk).name == "second"
    again = _apply_entries(cache(Counter), "default", queue, entries)  # the old batch, again
    assert (first.rows, again.rows, again.stale) == (1, 0, 1)
    assert in_db(Counter, counter.pk).name == "second"


def test_a_redelivered_older_save_never_brings_a_deleted_row_back():
    counter = Counter(name="alive")
    counter.save()
    old = cache(Counter).queue("default").read_new("test", 10)
    counter.delete()
    flush_model(cache(Counter), "default")
    from cachepatterns_app.patterns.write_behind.flush import _apply_entries

    result = _apply_entries(cache(Counter), "default", cache(Counter).queue("default"), old)
    assert (result.rows, result.stale) == (0, 1)
    assert in_db(Counter, counter.pk) is None


def test_a_synchronous_save_is_never_overwritten_by_an_older_queued_one():
    counter = Counter(name="queued")
    counter.save()
    direct = models.QuerySet(Counter).model(pk=counter.pk, name="direct")
    direct.save(sync=True)
    assert Counter.objects.get(pk=counter.pk).name == "direct"
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk).name == "direct"


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda pk: Counter.objects.filter(pk=pk).update(name="bulk"), id="update"),
        pytest.param(
            lambda pk: Counter.objects.bulk_update([Counter(pk=pk, name="bulk")], ["name"]), id="bulk_update"
        ),
    ],
)
def test_a_bulk_write_is_never_overwritten_by_an_older_queued_one(write):
    counter = Counter(name="start")
    counter.save(sync=True)
    counter.name = "queued"
    counter.save()
    write(counter.pk)
    assert Counter.objects.get(pk=counter.pk).name == "bulk"
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk).name == "bulk"


def test_a_queryset_delete_is_never_undone_by_an_older_queued_save():
    counter = Counter(name="start")
    counter.save(sync=True)
    counter.name = "queued"
    counter.save()
    Counter.objects.filter(pk=counter.pk).delete()
    with pytest.raises(Counter.DoesNotExist):
        Counter.objects.get(pk=counter.pk)
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk) is None


def test_a_write_after_a_flushed_delete_creates_the_row_again():
    key = uuid.uuid4()
    Counter(pk=key, name="one").save()
    Counter(pk=key, name="one").delete()
    flush_write_behind(Counter)
    Counter(pk=key, name="two").save()
    flush_write_behind(Counter)
    assert in_db(Counter, key).name == "two"


def tombstones_of(model: type[models.Model]) -> dict[str, int]:
    return dict(
        models.QuerySet(WriteBehindTombstone).filter(label=cache(model).label).values_list("pk_text", "seq")
    )


def test_a_tombstone_stays_while_an_older_write_is_queued_and_is_pruned_after_its_flush():
    from cachepatterns_app.patterns.write_behind.model import prune_tombstones

    counter = Counter(name="start")
    counter.save(sync=True)
    counter.name = "queued before the delete"
    counter.save()
    Counter.objects.filter(pk=counter.pk).delete()  # direct: a tombstone above the queued write
    assert list(tombstones_of(Counter)) == [str(counter.pk)]
    assert prune_tombstones(cache(Counter), "default") == 0, "the queued write still needs it"
    assert list(tombstones_of(Counter)) == [str(counter.pk)]
    flush_write_behind(Counter)  # the older write is skipped against the tombstone
    assert in_db(Counter, counter.pk) is None
    assert prune_tombstones(cache(Counter), "default") == 1
    assert tombstones_of(Counter) == {}
    flush_write_behind(Counter)
    assert in_db(Counter, counter.pk) is None
    with pytest.raises(Counter.DoesNotExist):
        Counter.objects.get(pk=counter.pk)


def test_tombstones_below_the_oldest_queued_write_are_pruned_and_newer_ones_kept():
    from cachepatterns_app.patterns.write_behind.model import prune_tombstones

    gone = Counter(name="gone")
    gone.save()
    gone.delete()
    flush_write_behind(Counter)  # the flushed delete leaves a tombstone
    (old_seq,) = tombstones_of(Counter).values()
    waiting = Counter(name="still queued")
    waiting.save()  # newer than the tombstone, not flushed
    later = Counter(name="deleted later")
    later.save(sync=True)
    Counter.objects.filter(pk=later.pk).delete()  # a tombstone above the queued write
    assert prune_tombstones(cache(Counter), "default") == 1
    left = tombstones_of(Counter)
    assert list(left) == [str(later.pk)]
    assert left[str(later.pk)] > old_seq


def test_the_reclaim_task_prunes_what_no_queued_write_needs():
    from cachepatterns_app import tasks

    for i in range(3):
        row = Counter(name=f"deleted {i}")
        row.save()
        row.delete()
    flush_write_behind(Counter)
    assert len(tombstones_of(Counter)) == 3
    assert stream_length(Counter) == 0
    task = tasks.reclaim_pending.apply()
    assert task.successful(), task.traceback
    assert tombstones_of(Counter) == {}


# -- back-pressure and a Redis that cannot queue --------------------------------------------


def _limited(policy: str) -> Any:
    from django.conf import settings

    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "MAX_PENDING": 2, "ON_CACHE_FAILURE": policy}
    return cachepatterns(WRITE_BEHIND=wb)


def test_beyond_max_pending_a_save_raises_and_queues_nothing():
    with _limited("raise"):
        Counter(name="1").save()
        Counter(name="2").save()
        third = Counter(name="3")
        with pytest.raises(WriteBehindError, match="MAX_PENDING=2"):
            third.save()
        assert stream_length(Counter) == 2
        assert in_db(Counter, third.pk) is None


def test_beyond_max_pending_a_save_can_write_synchronously():
    with _limited("sync"):
        Counter(name="1").save()
        Counter(name="2").save()
        third = Counter(name="3")
        third.save()
        assert in_db(Counter, third.pk).name == "3"
        assert stream_length(Counter) == 2


def _caches(server: Any) -> Any:
    from django.test import override_settings

    return override_settings(CACHES=server.caches(socket_timeout=2.0))


def test_redis_unreachable_at_save_writes_the_database_synchronously():
    with private_redis() as server, _caches(server), _limited("sync"):
        counter = Counter(name="before")
        counter.save()
        server.stop()
        counter.name = "during the outage"
        counter.save()
        assert in_db(Counter, counter.pk).name == "during the outage"


def test_redis_unreachable_at_save_raises_with_raise_and_writes_nothing():
    with private_redis() as server, _caches(server), _limited("raise"):
        server.stop()
        counter = Counter(name="nowhere")
        with pytest.raises(WriteBehindError, match="Redis is unavailable"):
            counter.save()
        assert in_db(Counter, counter.pk) is None


def test_the_flush_task_with_redis_down_warns_and_returns_zero(caplog):
    """Beat runs the task whatever Redis's state: a stopped Redis is a warning, not a traceback."""
    import logging

    from cachepatterns_app import tasks

    with private_redis() as server, _caches(server), _limited("sync"):
        Counter(name="queued").save()
        server.stop()
        with caplog.at_level(logging.WARNING, "cachepatterns_app"):
            task = tasks.flush_write_behind.apply(args=("testapp.counter",))
    assert task.successful(), task.traceback
    assert task.result == 0
    assert [r.levelno for r in caplog.records if r.name == "cachepatterns_app.tasks"] == [logging.WARNING]


def test_the_reclaim_task_with_redis_down_warns_and_returns_zero(caplog):
    import logging

    from cachepatterns_app import tasks

    with private_redis() as server, _caches(server), _limited("sync"):
        Counter(name="queued").save()
        server.stop()
        with caplog.at_level(logging.WARNING, "cachepatterns_app"):
            task = tasks.reclaim_pending.apply()
    assert task.successful(), task.traceback
    assert task.result == 0
    assert [r.levelno for r in caplog.records if r.name == "cachepatterns_app.tasks"] == [logging.WARNING]


def test_a_direct_flush_with_redis_down_raises_instead_of_claiming_consistency():
    """
    ``flush_write_behind()`` and ``objects.flushed()`` promise that SQL sees every queued
    write. With Redis unreachable the queue cannot be read, so they raise (the beat task,
    which nobody waits on, warns instead: the test above).
    """
    from cachepatterns_app.exceptions import CacheUnavailable

    with private_redis() as server, _caches(server), _limited("sync"):
        Counter(name="queued").save()
        server.stop()
        with pytest.raises(CacheUnavailable):
            flush_write_behind(Counter)
        with pytest.raises(CacheUnavailable):
            list(Counter.objects.flushed().all())


def test_a_direct_write_during_an_outage_wins_over_older_queued_writes():
    # Queued before the outage, not flushed; the same row saved (synchronously) during
    # it; Redis comes back: the flush fences the row first, so the old write is skipped.
    with private_redis() as server, _caches(server), _limited("sync"):
        counter = Counter(name="queued before")
        counter.save()
        server.pause()
        try:
            with cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": 0.01}):
                counter.name = "written during"
                counter.save()
        finally:
            server.resume()
        assert in_db(Counter, counter.pk).name == "written during"
        flush_write_behind(Counter)
        assert in_db(Counter, counter.pk).name == "written during"
        assert Counter.objects.get(pk=counter.pk).name == "written during"


# -- poison, retries, dead letters -----------------------------------------------------------


def test_a_poison_write_is_isolated_retried_then_dead_lettered_and_replayable():
    from django.conf import settings

    Tally(key="taken", label="same").save(sync=True)
    good = [Tally(key=f"good-{i}", label=f"label-{i}") for i in range(5)]
    for tally in good:
        tally.save()
    poison = Tally(key="poison", label="same")  # the unique label is taken
    poison.save()
    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "MAX_RETRIES": 2, "RECLAIM_IDLE": 0.001}
    with cachepatterns(WRITE_BEHIND=wb):
        first = flush_model(cache(Tally), "default")
        assert (first.rows, first.failed, first.dead) == (5, 1, 0)
        assert all(in_db(Tally, t.pk) for t in good)
        assert Tally.objects.get(pk="poison").label == "same"  # still queued, still visible
        second = flush_model(cache(Tally), "default")
        assert second.dead == 1
    assert operations.dead_letters()[0]["pk"] == "poison"
    assert "IntegrityError" in operations.dead_letters()[0]["error"]
    assert stream_length(Tally) == 0
    with pytest.raises(Tally.DoesNotExist):
        Tally.objects.get(pk="poison")  # the database's truth again
    # Fix the cause, replay: the write lands.
    models.QuerySet(Tally).filter(pk="taken").update(label="other")
    assert operations.replay() == 1
    flush_write_behind(Tally)
    assert in_db(Tally, "poison").label == "same"
    assert operations.dead_letters() == []


def test_purge_drops_dead_letters():
    from django.conf import settings

    Tally(key="taken", label="same").save(sync=True)
    Tally(key="poison", label="same").save()
    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "MAX_RETRIES": 1}
    with cachepatterns(WRITE_BEHIND=wb):
        flush_model(cache(Tally), "default")
    assert len(operations.dead_letters()) == 1
    assert operations.purge() == 1
    assert operations.dead_letters() == []


def test_status_reports_the_queue():
    Counter(name="a").save()
    Counter(name="b").save()
    report = {m["label"]: m for m in operations.status()["models"]}
    assert report["testapp.counter"]["pending"] == 2
    assert report["testapp.counter"]["oldest_pending_age"] >= 0
    flush_write_behind()
    report = {m["label"]: m for m in operations.status()["models"]}
    assert report["testapp.counter"]["pending"] == 0
    assert report["testapp.counter"]["oldest_pending_age"] is None


def test_a_lost_consumer_group_is_recreated(redis):
    Counter(name="a").save()
    stream = cache(Counter).wb_keys("default").stream
    redis.xgroup_destroy(stream, "cachepatterns")
    assert flush_write_behind(Counter) == 1


# -- what depends on write-behind rows -----------------------------------------------------


@cache_aside(key="wb:popular", depends_on={Counter: lambda row: {}})
def popular() -> list[str]:
    return sorted(Counter.objects.filter(views__gte=10).values_list("name", flat=True))


def test_a_flush_invalidates_what_depends_on_the_rows():
    counter = Counter(name="hot", views=1)
    counter.save()
    flush_write_behind(Counter)
    assert popular() == []
    settle()
    Counter.objects.incr(counter.pk, "views", 20)
    assert popular() == []  # SQL sees the write only after the flush...
    flush_write_behind(Counter)
    assert popular() == ["hot"]  # ...which invalidates the cached result


def test_nothing_of_a_queued_write_waits_for_a_transaction():
    counter = Counter(name="outside")
    with transaction.atomic():
        counter.save()
    assert Counter.objects.get(pk=counter.pk).name == "outside"
    assert Entry("1-0", {"~s": "5"}).seq == 5


def test_a_worker_shutting_down_finishes_what_it_was_handed():
    from cachepatterns_app.patterns.write_behind.queue import consumer_name

    counter = Counter(name="held")
    counter.save()
    held = cache(Counter).queue("default").read_new(consumer_name(), 10)  # handed, not applied
    assert len(held) == 1
    assert flush_model(cache(Counter), "default").rows == 0  # a plain flush leaves it to its holder
    assert operations.drain() == 1
    assert in_db(Counter, counter.pk).name == "held"


def test_an_old_waiting_write_is_logged_at_warning(caplog):
    from django.conf import settings

    Counter(name="waiting").save()
    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "WARN_AFTER": 0.000001}
    logger = "cachepatterns_app.patterns.write_behind.flush"
    with cachepatterns(WRITE_BEHIND=wb), caplog.at_level("WARNING", logger=logger):
        cache(Counter).queue("default").read_new("elsewhere", 10)  # held by another worker
        flush_model(cache(Counter), "default")
    assert any("oldest waiting write" in r.getMessage() for r in caplog.records if r.name == logger)
