"""Fixtures shared by the whole suite: a clean Redis database and clean app state per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django_redis import get_redis_connection

from cachepatterns_app import invalidation, stats, store


@pytest.fixture
def redis() -> Any:
    """The raw redis-py client of the test Redis database."""
    return get_redis_connection("default")


@pytest.fixture(autouse=True)
def _clean_state(redis: Any) -> Iterator[None]:
    store.reset()
    redis.flushdb()
    with stats._lock:
        stats._pending.clear()
        stats._local.clear()
    with invalidation._failed_lock:
        invalidation._failed.clear()
    yield
    store.reset()


@pytest.fixture
def counts() -> Any:
    """Return a function giving this process's stats counts for one label."""

    def read(label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for field, n in stats.local_counts().items():
            name, _, event = field.rpartition("|")
            if name == label:
                out[event] = n
        return out

    return read
