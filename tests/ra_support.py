"""Helpers of the refresh-ahead tests: the keys of a refreshed result, the worker's counts."""

from __future__ import annotations

from typing import Any

from cachepatterns_app import stats
from cachepatterns_app.keys import meta_key
from tests.refreshapp.refreshers import flag
from tests.support import plain_keys, wait_until

__all__ = ["Keys", "calls", "flag", "keys_of", "shared_counts", "wait_filled", "worker_count"]


class Keys:
    """The value, lease and meta keys of one plain refresh-ahead result."""

    def __init__(self, member: str) -> None:
        keys = plain_keys(member)
        self.value = keys.value
        self.lease = keys.lease
        self.meta = meta_key(keys.value)


def keys_of(fn: Any, **params: Any) -> Keys:
    return Keys(fn.key(**params))


def calls(redis: Any, name: str) -> int:
    """Return how many times loader ``name`` ran, in every process."""
    return int(redis.get(flag("calls", name)) or 0)


def shared_counts(label: str) -> dict[str, int]:
    """Return every process's counts for ``label`` (the worker ships its own after each task)."""
    return stats.snapshot().get(label, {})


def worker_count(label: str, event: str, at_least: int = 1) -> int:
    """Wait until every process together counted ``event`` for ``label`` ``at_least`` times."""
    return int(
        wait_until(lambda: shared_counts(label).get(event, 0) >= at_least) and shared_counts(label)[event]
    )


def wait_filled(redis: Any, keys: Keys) -> None:
    """Wait for a fire-and-forget fill to land."""
    assert wait_until(lambda: redis.exists(keys.value) and redis.exists(keys.meta)), "the fill never landed"
