"""
The two functions the refresh-ahead benchmark reads: the same loader (one query
plus ``COST`` seconds standing for an expensive one) behind plain ``@cache_aside``
and behind ``@refresh_ahead``. The bench's Celery worker imports this module
(``bench.celery_app``), as a project's worker imports its decorated functions from
an ``AppConfig.ready()``.
"""

from __future__ import annotations

import time
from typing import Any

from django_redis import get_redis_connection

from bench.models import PlainAuthor
from cachepatterns_app import cache_aside, refresh_ahead

__all__ = ["COST", "TTL", "calls_key", "hot_ahead", "hot_aside"]

#: The issue's scenario: a hot key with a 5-second TTL.
TTL = 5
#: Seconds the loader stands for beyond its one query.
COST = 0.05


def calls_key(variant: str) -> str:
    """Return the Redis counter of loader runs of ``variant`` (any process)."""
    return f"cpbench:{{refresh}}:calls:{variant}"


def _load(variant: str) -> dict[str, Any]:
    get_redis_connection("default").incr(calls_key(variant))
    count = PlainAuthor.objects.count()
    time.sleep(COST)
    return {"variant": variant, "authors": count, "computed": time.time()}


@cache_aside(key="bench:hot:aside", ttl=TTL)
def hot_aside() -> dict[str, Any]:
    """Plain cache-aside: the key expires, the next reader recomputes."""
    return _load("aside")


@refresh_ahead(key="bench:hot:ahead", ttl=TTL, factor=0.2)
def hot_ahead() -> dict[str, Any]:
    """Refresh-ahead: a read in the last second schedules a background recompute."""
    return _load("ahead")
