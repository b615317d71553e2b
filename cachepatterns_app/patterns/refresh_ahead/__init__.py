"""
Refresh-ahead: serve the cached value, and recompute it in the background before
it expires, so that a hot key is never a synchronous miss after its first read.

- ``policy``: when a value is due (the window ``factor * ttl``, or XFetch), backoff.
- ``slots``: the one-round-trip read (value, PTTL, compute time, refresh lease).
- ``functions``: ``@refresh_ahead`` functions and the registry the worker uses.
- ``rows``: ``CacheAsideManager(refresh_ahead=…)``.
- ``worker``: scheduling after the read, and the worker's begin/compute/store.
- ``hot``: sampled read counts and ``cachepatterns.refresh_hot_keys``.

The Celery tasks (``cachepatterns.refresh_key``, ``cachepatterns.refresh_row``,
``cachepatterns.refresh_hot_keys``) are thin shells over ``refresh_function``,
``refresh_row`` and ``refresh_hot_keys``.
"""

from __future__ import annotations

from cachepatterns_app.patterns.refresh_ahead.functions import (
    RefreshingFunction,
    decorate,
    refresh_function,
    registered,
)
from cachepatterns_app.patterns.refresh_ahead.hot import refresh_hot_keys
from cachepatterns_app.patterns.refresh_ahead.policy import refresh_due, xfetch_gap_ms
from cachepatterns_app.patterns.refresh_ahead.rows import RefreshAheadRowCache, refresh_row

__all__ = [
    "RefreshAheadRowCache",
    "RefreshingFunction",
    "decorate",
    "refresh_due",
    "refresh_function",
    "refresh_hot_keys",
    "refresh_row",
    "registered",
    "xfetch_gap_ms",
]
