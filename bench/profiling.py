"""
``python -m bench --profile PATH``: cProfile one path many times and print where
its time goes (by own time, by cumulative time, and cachepatterns' own functions),
to find what to optimise. PATH is one of :data:`PATHS`.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
from collections.abc import Callable
from typing import Any

from django.db import models

__all__ = ["PATHS", "profile"]

CALLS = 20_000
PATHS = ("hit", "miss", "save", "wt_save", "wb_save", "wb_flush", "wb_flush_update", "page", "get_many")


def _path(name: str) -> tuple[Callable[[], Any], int]:
    from bench.data import HIT_PK, ROW_PKS, SAVE_PK
    from bench.models import Author, Profile
    from bench.rows import RowBench

    rows = RowBench()
    rows.warm()
    if name == "hit":
        return (lambda: Author.objects.get(pk=HIT_PK)), CALLS
    if name == "miss":
        variant = next(v for v in rows.read_variants() if v.name == "miss")

        def miss() -> None:
            variant.before()  # type: ignore[misc]
            variant.run()
            variant.after()  # type: ignore[misc]

        return miss, CALLS // 10
    if name in ("save", "wt_save"):
        row = models.QuerySet(Author if name == "save" else Profile).get(
            pk=1 if name == "wt_save" else SAVE_PK
        )

        def save() -> None:
            row.post_count += 1
            row.save()

        return save, CALLS // 10
    if name == "wb_save":
        from bench.write_behind import WriteBehindBench

        variant = next(v for v in WriteBehindBench().save_variants() if v.name == "wb_save")
        return variant.run, CALLS // 10
    if name == "get_many":
        return (lambda: Author.objects.get_many(ROW_PKS)), CALLS // 20
    from bench.pages import PageBench

    pages = PageBench()
    pages.warm()
    variant = next(v for v in pages.variants() if v.name == "page_hit")
    return variant.run, CALLS


def _profile_flush(updates: bool) -> cProfile.Profile:
    """
    Profile only the flushes of 100-row batches (not the queueing): of queued creates,
    or, with ``updates``, of a second save of each of those rows once they exist.
    """
    from bench.write_behind import WriteBehindBench, _row
    from cachepatterns_app.patterns.write_behind.flush import flush_model

    bench = WriteBehindBench()
    bench.drain()
    profiler = cProfile.Profile()
    for b in range(CALLS // 1000):
        rows = [_row(b * 100 + i + 1) for i in range(100)]
        for row in rows:
            row.save()
        if updates:
            flush_model(bench.cache, "default", consumer="bench")
            for row in rows:
                row.post_count += 1
                row.save()
        profiler.enable()
        flush_model(bench.cache, "default", consumer="bench")
        profiler.disable()
    return profiler


def profile(name: str) -> int:
    if name in ("wb_flush", "wb_flush_update"):
        return _report(name, _profile_flush(updates=name == "wb_flush_update"), CALLS // 10)
    run, calls = _path(name)
    for _ in range(200):
        run()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        run()
    profiler.disable()
    return _report(name, profiler, calls)


def _report(name: str, profiler: cProfile.Profile, calls: int) -> int:
    for order, restriction in (("tottime", 25), ("cumulative", 25), ("tottime", "cachepatterns_app")):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        if restriction == 25:
            stats = stats.strip_dirs()
        stats.sort_stats(order).print_stats(restriction)
        title = f"{name}: {calls} calls, sorted by {order}, showing {restriction}"
        sys.stdout.write(f"\n=== {title} ===\n{out.getvalue()}")
    return 0
