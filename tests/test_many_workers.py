"""
Scale-out (issue 13, item 2): write-behind flushes and refresh-ahead refreshes run by
one Celery worker with four prefork processes, all on one queue (and, for
write-behind, one model's stream), while the test process writes and reads.

The expectations are exact and need no timing: every counted increment reaches the
database once, the last queued save of a row is what the database ends with, and no
read after a write has returned ever sees an older row than that write (a refresh
that loaded the row before the write must be refused). That the four processes
really worked side by side is read from the worker's own log (the pool process that
ran each task).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, models

from cachepatterns_app import flush_write_behind
from cachepatterns_app.patterns.refresh_ahead.worker import drain
from cachepatterns_app.registry import row_cache_for
from tests.conftest import start_worker, stop_worker
from tests.refreshapp.models import Headline
from tests.support import PATIENCE, Worker, keys_of, wait_until
from tests.testapp.models import Counter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]

PROCESSES = 4


@pytest.fixture
def prefork() -> Iterator[Any]:
    """One worker, four prefork processes, on a queue of its own (the default queue meanwhile)."""
    worker = start_worker(f"cp-prefork-{os.getpid()}", pool="prefork", concurrency=PROCESSES)
    try:
        yield worker
    finally:
        stop_worker(worker)


def pool_processes(worker: Any, task: str) -> set[str]:
    """Return the pool processes the worker's log says ran ``task`` successfully."""
    pattern = re.compile(rf"/(ForkPoolWorker-\d+)\].*{re.escape(task)}\[[^\]]+\] succeeded")
    return set(pattern.findall(worker.output()))


def test_four_prefork_processes_flushing_one_stream_end_exact(prefork):
    """
    Fault: none; the contention itself. Four threads add 1 to the views of 20 rows
    (6,000 increments), a fifth saves names s1…s40 into 20 other rows, while bursts of
    four flush tasks keep all four pool processes flushing the same stream at once.
    Expectation: every row's views is exactly what was counted, every named row holds
    its last save (no older queued state wins), the stream ends empty.
    """
    counted = [Counter.objects.create(name=f"c{i}") for i in range(20)]
    named = [Counter.objects.create(name="s0") for _ in range(20)]
    flush_write_behind(Counter)
    done = threading.Event()

    def count(offset: int) -> None:
        for i in range(1500):
            Counter.objects.incr(counted[(i + offset) % 20].pk, "views", 1)

    def rename() -> None:
        for seq in range(1, 41):
            for row in named:
                instance = Counter.objects.get(pk=row.pk)
                instance.name = f"s{seq}"
                instance.save()

    def keep_flushing() -> None:
        from cachepatterns_app.tasks import flush_write_behind as task

        while not done.is_set():
            burst = [task.s("testapp.counter").apply_async(queue=prefork.queue) for _ in range(PROCESSES)]
            for result in burst:
                result.get(timeout=PATIENCE)

    flusher = Worker(keep_flushing, name="flusher")
    writers = [Worker(lambda o=o: count(o), name=f"counter-{o}") for o in range(4)]
    writers.append(Worker(rename, name="renamer"))
    flusher.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.result(300)
    done.set()
    flusher.result(300)
    cache = row_cache_for(Counter)
    assert cache is not None
    queue = cache.queue("default")
    flush_write_behind(Counter)
    # Early flushes (a backlog past BATCH_SIZE publishes one) may still be running in
    # the pool: their entries are theirs until they commit and acknowledge.
    assert wait_until(lambda: queue.pending_summary()[0] == 0), "a flush never finished"
    flush_write_behind(Counter)

    rows = dict(models.QuerySet(Counter).values_list("pk", "views"))
    assert {rows[c.pk] for c in counted} == {300}, "an increment was lost or applied twice"
    names = dict(models.QuerySet(Counter).values_list("pk", "name"))
    assert {names[r.pk] for r in named} == {"s40"}, "an older queued save won"
    assert queue.length() == 0
    assert len(pool_processes(prefork, "cachepatterns.flush_write_behind")) >= 2, prefork.output()


def title_number(headline: Headline) -> int:
    return int(headline.title[1:])


def test_four_prefork_processes_refreshing_rows_never_serve_an_older_row(prefork, redis):
    """
    Fault: none; the contention itself. Eight rows are read in their refresh window
    (each read schedules a ``refresh_row``, run by one of four pool processes) while a
    writer saves titles t1…t30 into each. Expectation: a read that starts after a save
    of ``tN`` returned never sees a title older than ``tN`` (a refresh that loaded the
    row before the save is refused); once everything has run, every cached row is the
    database's row.
    """
    rows = [Headline.objects.create(owner=i, title="t0") for i in range(8)]
    floors = {row.pk: 0 for row in rows}
    lock = threading.Lock()
    stale: list[str] = []
    done = threading.Event()

    def enter_window(pk: Any) -> None:
        # Ten seconds left of sixty: inside the last 12 s, where a hit schedules a refresh.
        redis.pexpire(keys_of(Headline, pk).value, 10_000)

    def write() -> None:
        for n in range(1, 31):
            for row in rows:
                headline = models.QuerySet(Headline).get(pk=row.pk)
                headline.title = f"t{n}"
                headline.save()
                with lock:
                    floors[row.pk] = n
        connections.close_all()

    def read(offset: int) -> None:
        i = offset
        while not done.is_set():
            pk = rows[i % len(rows)].pk
            i += 1
            with lock:
                floor = floors[pk]
            got = Headline.objects.get(pk=pk)
            if title_number(got) < floor:
                with lock:
                    stale.append(f"pk={pk}: read {got.title} after t{floor} was saved")
            enter_window(pk)
        connections.close_all()

    for row in rows:
        Headline.objects.get(pk=row.pk)  # cached
        enter_window(row.pk)
    readers = [Worker(lambda o=o: read(o), name=f"reader-{o}") for o in range(3)]
    writer = Worker(write, name="writer")
    for reader in readers:
        reader.start()
    writer.start()
    writer.result(300)
    done.set()
    for reader in readers:
        reader.result(300)

    drain()  # every scheduled refresh published
    leases = [keys_of(Headline, row.pk).lease for row in rows]
    assert wait_until(lambda: not any(redis.exists(lease) for lease in leases)), "refreshes still running"
    assert not stale, "\n".join(stale)
    cache = row_cache_for(Headline)
    assert cache is not None
    for row in rows:
        raw = redis.get(keys_of(Headline, row.pk).value)
        if raw is not None:
            assert cache.decode(raw, "default").title == "t30"
        assert Headline.objects.get(pk=row.pk).title == "t30"
    assert len(pool_processes(prefork, "cachepatterns.refresh_row")) >= 2, prefork.output()
