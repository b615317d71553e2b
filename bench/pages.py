"""
Issue 3 on the shared Redis: the hit of a cached 10-post page through
``@cache_aside`` against a raw GET of the same bytes.

The decorated functions are built on first use rather than at import, because
``depends_on`` connects signal handlers and the bench must still run (and say
why) while ``cachepatterns_app.decorators`` is missing or broken.
"""

from __future__ import annotations

import functools
from typing import Any

from django_redis import get_redis_connection

from bench.data import PAGE_AUTHOR
from bench.harness import Variant
from bench.models import Post

__all__ = ["FAMILY", "KEY", "PageBench", "decorated", "decorators_error"]

KEY = "user:{user_id}:posts:page:{page}:size:{per_page}"
FAMILY = "user:{user_id}:posts"


def decorators_error() -> str | None:
    """Return why ``@cache_aside`` cannot be benchmarked, or None if it can."""
    try:
        decorated()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@functools.cache
def decorated() -> dict[str, Any]:
    """Return the decorated page functions (built once per process)."""
    from cachepatterns_app import cache_aside

    @cache_aside(key=KEY, ttl=900, family=FAMILY, depends_on={Post: "author_id"})
    def user_posts(user_id: int, page: int = 1, per_page: int = 10) -> Any:
        start = (page - 1) * per_page
        return Post.objects.filter(author_id=user_id).order_by("-created_at", "-id")[start : start + per_page]

    calls = {"n": 0}
    template_page: list[Any] = []

    # A stand-in with the same key and family whose body costs no query: it fills
    # the 100,000-page families quickly. Invalidation cost cannot depend on how
    # a member was computed, only on how many there are.
    @cache_aside(key=KEY, ttl=3600, family=FAMILY)
    def stub_posts(user_id: int, page: int = 1, per_page: int = 10) -> Any:
        calls["n"] += 1
        return template_page

    return {"user_posts": user_posts, "stub_posts": stub_posts, "calls": calls, "template": template_page}


def member_value_key(client: Any, fn: Any, **params: Any) -> str:
    """Return the Redis key holding ``fn(**params)``'s cached value in the current generation."""
    from cachepatterns_app.families import Family

    keys = Family(FAMILY).keys(params)
    generation = client.get(keys.generation)
    if generation is None:
        raise RuntimeError(f"Family {FAMILY!r} {params} has no generation in Redis.")
    value_key, _ = keys.member(generation.decode(), fn.key(**params))
    return value_key


class PageBench:
    """The page hit, its raw GET baseline and the uncached query."""

    def __init__(self) -> None:
        self.redis = get_redis_connection("default")
        self.fn = decorated()["user_posts"]
        self.params = {"user_id": PAGE_AUTHOR, "page": 1, "per_page": 10}

    def warm(self) -> dict[str, str]:
        from bench.rows import wait_for_key

        first = self.fn(**self.params)
        family = {"user_id": PAGE_AUTHOR}
        self.value_key = member_value_key(self.redis, self.fn, **family, page=1, per_page=10)
        wait_for_key(self.redis, self.value_key)
        self.payload = self.redis.get(self.value_key)
        again = self.fn(**self.params)
        if [p.pk for p in again] != [p.pk for p in first] or len(first) != 10:
            raise RuntimeError("The cached page differs from the computed one.")
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            self.fn(**self.params)
        return {
            "@cache_aside 10-post page hit: SQL queries": str(len(ctx.captured_queries)),
            "Cached 10-post page payload": f"{len(self.payload)} bytes",
        }

    def variants(self) -> list[Variant]:
        redis = self.redis
        key = self.value_key
        fn = self.fn
        params = self.params

        def uncached() -> None:
            list(Post.objects.filter(author_id=PAGE_AUTHOR).order_by("-created_at", "-id")[:10])

        return [
            Variant("page_raw_get", "raw redis-py GET of the cached page's bytes", lambda: redis.get(key)),
            Variant("page_hit", "@cache_aside 10-post page hit", lambda: fn(**params)),
            Variant("page_orm", "the page's queryset without cache (10 posts)", uncached),
        ]
