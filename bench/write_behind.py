"""
Write-behind: a queued ``save()`` against a plain ``save()``, the flush's cost per
row against a plain ``save()`` per row, and the flush rate of 1, 2 and 4 worker
processes draining one backlog through the consumer group.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.db import models

from bench.data import SAVE_PK
from bench.harness import Summary, Variant, summary_of
from bench.models import PlainAuthor, QueuedAuthor

__all__ = ["WriteBehindBench"]

ROOT = Path(__file__).resolve().parent.parent


def _row(i: int) -> QueuedAuthor:
    now = PlainAuthor.objects.get(pk=SAVE_PK).joined
    return QueuedAuthor(
        id=uuid.uuid4(), name=f"queued {i}", email=f"q{i}-{uuid.uuid4().hex}@example.com", joined=now
    )


class WriteBehindBench:
    def __init__(self) -> None:
        from cachepatterns_app.registry import row_cache_for

        self.cache = row_cache_for(QueuedAuthor)
        self.queued = _row(0)
        self.queued.save()
        self.plain = PlainAuthor.objects.get(pk=SAVE_PK)
        self.floor: Summary | None = None  # flush_per_row's raw INSERT, measured beside it

    def save_variants(self) -> list[Variant]:
        from django_redis import get_redis_connection

        from cachepatterns_app.patterns.write_behind.state import encode_fields

        queued, plain = self.queued, self.plain
        redis = get_redis_connection("default")
        # The floor a queued save can reach: the same row state written to a hash and
        # appended to a stream in one MULTI, with no Django or checks around it.
        state = encode_fields(
            self.cache.codec,
            {f.attname: getattr(queued, f.attname) for f in QueuedAuthor._meta.concrete_fields},
        )
        floor_row, floor_stream = "cpbench:{wbfloor}:row", "cpbench:{wbfloor}:stream"

        def raw_multi() -> None:
            pipe = redis.pipeline(transaction=True)
            pipe.hset(floor_row, mapping=dict(zip(state[::2], state[1::2], strict=True)))
            pipe.xadd(floor_stream, {"pk": str(queued.pk), "seq": "1"}, maxlen=1000, approximate=True)
            pipe.execute()

        def queued_save() -> None:
            queued.post_count += 1
            queued.save()

        def plain_save() -> None:
            plain.post_count += 1
            plain.save()

        return [
            Variant("wb_plain_save", "PlainAuthor save() (no cache), beside the queued save", plain_save),
            Variant("wb_save", "QueuedAuthor save() write-behind (queued in Redis)", queued_save),
            Variant(
                "wb_raw_multi", "raw redis-py MULTI{HSET, XADD} of that row's state (the floor)", raw_multi
            ),
        ]

    def drain(self) -> None:
        from cachepatterns_app.patterns.write_behind.flush import flush_model

        while self.cache.queue("default").length():
            result = flush_model(self.cache, "default", consumer="bench")
            if not (result.entries or result.dead):
                # A write that keeps failing is retried with backoff until MAX_RETRIES:
                # the bench does not wait for that; it says what is stuck.
                raise RuntimeError(
                    f"write-behind drain made no progress: {result.failed} failing, "
                    f"{result.left} left queued; see the warnings above and cachepatterns_dlq list"
                )

    def flush_per_row(self, batches: int, size: int) -> tuple[Summary, Summary]:
        """
        Queue ``size`` new rows and time their flush, then save each of them once more and
        time that flush (the rows exist now: the update statement); ``batches`` times.
        Samples: ns per row, creates and updates.
        """
        from cachepatterns_app.patterns.write_behind.flush import flush_model

        self.drain()
        creates, updates, floor = [], [], []
        for b in range(batches):
            floor.append(self._raw_insert(size) // size)
            rows = [_row(b * size + i + 1) for i in range(size)]
            for kind, samples in (("created", creates), ("updated", updates)):
                for row in rows:
                    row.post_count += 1
                    row.save()
                # As every other measurement here (and timeit): collected before, the
                # collector paused while timing. The worker rates below run with it on.
                gc.collect()
                gc.disable()
                try:
                    started = time.perf_counter_ns()
                    result = flush_model(self.cache, "default", consumer="bench")
                    elapsed = time.perf_counter_ns() - started
                finally:
                    gc.enable()
                if result.rows != size:
                    raise RuntimeError(f"flushed {result.rows} {kind} rows of {size}")
                samples.append(elapsed // size)
        self.floor = summary_of(
            "wb_raw_insert_row",
            f"raw multi-row INSERT of {size} prepared rows in one transaction, per row (the floor)",
            floor,
        )
        return (
            summary_of("wb_flush_row", f"flush of a {size}-row batch of new rows, per row", creates),
            summary_of(
                "wb_flush_update_row", f"flush of a {size}-row batch of updated rows, per row", updates
            ),
        )

    def _raw_insert(self, size: int) -> int:
        """Insert ``size`` rows with one hand-written statement in a transaction; return ns."""
        from django.db import connection, transaction

        fields = QueuedAuthor._meta.concrete_fields
        rows = [_row(-1 - i) for i in range(size)]
        params = [f.get_db_prep_save(getattr(row, f.attname), connection) for row in rows for f in fields]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields)
        tuples = ", ".join(["(" + ", ".join(["%s"] * len(fields)) + ")"] * size)
        table = quote(QueuedAuthor._meta.db_table)
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter_ns()
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {tuples}", params)
            elapsed = time.perf_counter_ns() - started
        finally:
            gc.enable()
        models.QuerySet(QueuedAuthor).filter(pk__in=[row.pk for row in rows]).delete()
        return elapsed

    def workers(self, counts: tuple[int, ...], rows: int, progress: Callable[[str], None]) -> dict[str, str]:
        """Return rows/s for each number of flush worker processes on a backlog of ``rows`` rows."""
        out: dict[str, str] = {}
        for k in counts:
            self.drain()
            for i in range(rows):
                _row(i).save()
            progress(f"write-behind: {k} worker(s) draining {rows:,} queued rows")
            started = time.monotonic()
            children = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.flush_child", f"worker-{k}-{n}"],
                    cwd=ROOT,
                    env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"},
                )
                for n in range(k)
            ]
            for child in children:
                child.wait(timeout=600)
            elapsed = time.monotonic() - started
            left = self.cache.queue("default").length()
            out[f"write-behind flush, {k} worker process(es), {rows:,} rows"] = (
                f"{rows / elapsed:,.0f} rows/s ({elapsed:.2f} s, {left} left)"
            )
        models.QuerySet(QueuedAuthor).all().delete()
        return out
