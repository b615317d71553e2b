"""
django-cacheops and django-cachalot measured on the same row, each in its own
process with its own settings module: both patch Django's ORM globally, so they
can share a process neither with each other nor with the rest of the bench.
cachepatterns is measured the same way in a third child, so that all three
ratios come from identical conditions.

Each child measures, interleaved, its library's hit of ``get(pk=…)`` on the same row,
a raw redis-py GET of the exact bytes that library stored for it (found by the
library's key prefix), and the uncached ORM get, and prints one JSON line. The
parent reports the ratio of the hit to the raw GET *measured in that child*.

Run one by hand: ``DJANGO_SETTINGS_MODULE=bench.settings_cacheops python -m bench.alternatives cacheops``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from django.db import models

__all__ = ["LIBRARIES", "run_alternative"]

LIBRARIES = {
    "cachepatterns": ("cachepatterns", "bench.settings_cachepatterns", "cpbench-self:*"),
    "cacheops": ("django-cacheops", "bench.settings_cacheops", "cpbench-cacheops:*"),
    "cachalot": ("django-cachalot", "bench.settings_cachalot", "cpbench-cachalot*"),
}


def run_alternative(name: str, rounds: int, timeout: float = 300) -> dict[str, Any]:
    """Run the child for ``name`` and return its result (``{"ok": False, "error": …}`` on failure)."""
    dist, settings_module, _ = LIBRARIES[name]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.alternatives", name, str(rounds)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "library": dist, "error": f"did not finish within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        return dict(json.loads(lines[-1]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
    return {"ok": False, "library": dist, "error": f"exit {done.returncode}: " + " / ".join(tail)}


# -- the child ---------------------------------------------------------------------------


def _string_keys(client: Any, pattern: str) -> set[bytes]:
    return {key for key in client.scan_iter(match=pattern, count=1000) if client.type(key) == b"string"}


def _fill_and_find(
    client: Any, pattern: str, fn: Callable[[], Any], timeout: float = 2.0
) -> tuple[bytes, bytes]:
    """
    Call ``fn`` (a miss that fills) and return (key, value) of the largest string it
    added under ``pattern``: the cached result (cacheops and cachalot also write small
    invalidation keys; cachepatterns fills without waiting, hence the polling).
    """
    before = _string_keys(client, pattern)
    fn()
    deadline = time.monotonic() + timeout
    while True:
        added = _string_keys(client, pattern) - before
        if added:
            values = {key: client.get(key) or b"" for key in added}
            key = max(values, key=lambda k: len(values[k]))
            return key, values[key]
        if time.monotonic() > deadline:
            raise RuntimeError(f"Nothing was cached under {pattern!r}: the library did not cache the read.")
        time.sleep(0.001)


def _operations(name: str) -> tuple[Any, dict[str, Callable[[], Any]]]:
    """Return the Redis client the library uses and its row and page operations (hit and uncached)."""
    from bench.data import HIT_PK, PAGE_AUTHOR
    from bench.models import Author, PlainAuthor, Post

    def page_query() -> Any:
        return Post.objects.filter(author_id=PAGE_AUTHOR).order_by("-created_at", "-id")[:10]

    if name == "cachepatterns":
        from django_redis import get_redis_connection

        from bench.pages import decorated, decorators_error

        ops = {
            "hit": lambda: Author.objects.get(pk=HIT_PK),
            "orm_get": lambda: models.QuerySet(Author).get(pk=HIT_PK),
        }
        if decorators_error() is None:
            user_posts = decorated()["user_posts"]
            ops["page_hit"] = lambda: user_posts(user_id=PAGE_AUTHOR, page=1, per_page=10)
            ops["page_orm"] = lambda: list(page_query())
        return get_redis_connection("default"), ops
    if name == "cacheops":
        from cacheops.redis import redis_client

        return redis_client, {
            "hit": lambda: PlainAuthor.objects.get(pk=HIT_PK),
            "orm_get": lambda: PlainAuthor.objects.nocache().get(pk=HIT_PK),  # type: ignore[attr-defined]
            "page_hit": lambda: list(page_query()),
            "page_orm": lambda: list(page_query().nocache()),
        }
    from cachalot.api import cachalot_disabled
    from django_redis import get_redis_connection

    def disabled(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with cachalot_disabled():
                return fn()

        return run

    return get_redis_connection("default"), {
        "hit": lambda: PlainAuthor.objects.get(pk=HIT_PK),
        "orm_get": disabled(lambda: PlainAuthor.objects.get(pk=HIT_PK)),
        "page_hit": lambda: list(page_query()),
        "page_orm": disabled(lambda: list(page_query())),
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        import cachepatterns_app

        return cachepatterns_app.__version__  # run from a checkout, not installed


def child(name: str, rounds: int) -> dict[str, Any]:
    """Measure library ``name`` (this process's settings module must be its own)."""
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.data import cleanup_redis
    from bench.harness import Variant, measure

    dist, _, pattern = LIBRARIES[name]
    client, ops = _operations(name)
    cleanup_redis(client, pattern)
    warmup = max(20, rounds // 20)
    out: dict[str, Any] = {"ok": True, "library": dist, "version": _version(dist)}
    try:
        row_key, row = _fill_and_find(client, pattern, ops["hit"])
        paged = "page_hit" in ops
        page_key, page = _fill_and_find(client, pattern, ops["page_hit"]) if paged else (b"", b"")
        with CaptureQueriesContext(connection) as ctx:
            ops["hit"]()
            if paged:
                ops["page_hit"]()
        out.update(queries_on_hit=len(ctx.captured_queries), payload_bytes=len(row), page_bytes=len(page))
        # Row and page are timed as separate groups of three, so each ratio comes
        # from a loop of the hit, its raw GET and the uncached query only.
        results = measure(
            [
                Variant("raw_get", f"raw redis-py GET of {dist}'s cached row", lambda: client.get(row_key)),
                Variant("hit", f"{dist} get(pk=…) hit", ops["hit"]),
                Variant("orm_get", "the same get with the library bypassed", ops["orm_get"]),
            ],
            rounds,
            warmup,
        )
        if paged:
            results.update(
                measure(
                    [
                        Variant(
                            "page_raw_get", f"raw GET of {dist}'s cached page", lambda: client.get(page_key)
                        ),
                        Variant("page_hit", f"{dist} 10-post page hit", ops["page_hit"]),
                        Variant("page_orm", "the same page with the library bypassed", ops["page_orm"]),
                    ],
                    rounds,
                    warmup,
                )
            )
    finally:
        cleanup_redis(client, pattern)
    out["results"] = {
        k: {"label": s.label, "median": s.median, "p90": s.p90, "n": s.n, "samples": s.samples}
        for k, s in results.items()
    }
    return out


if __name__ == "__main__":
    library, count = sys.argv[1], int(sys.argv[2])
    try:
        out = child(library, count)
    except Exception as e:
        out = {"ok": False, "library": LIBRARIES[library][0], "error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
