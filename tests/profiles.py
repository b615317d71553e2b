"""Helpers shared by the write-through tests: the cached row and the database row of a Profile."""

from __future__ import annotations

from typing import Any, cast

from django.db import models

from cachepatterns_app.registry import row_cache_for
from tests.support import keys_of
from tests.testapp.models import Profile


def cached(redis: Any, pk: Any) -> Profile | None:
    """Return the row cached for ``pk``, decoded by the library's codec, or None."""
    raw = redis.get(keys_of(Profile, pk).value)
    if raw is None:
        return None
    cache = row_cache_for(Profile)
    assert cache is not None
    return cast(Profile, cache.decode(raw, "default"))


def orm() -> models.QuerySet[Profile]:
    """Return a plain QuerySet of profiles: the database, never the cache."""
    return models.QuerySet(Profile)


def existing(pk: Any) -> Profile:
    """Return row ``pk`` from the database; it must exist."""
    found = db_row(pk)
    assert found is not None, f"row {pk} is not in the database"
    return found


def cached_entry(redis: Any, pk: Any) -> Profile:
    """Return the row cached for ``pk``; it must be cached."""
    entry = cached(redis, pk)
    assert entry is not None, f"row {pk} is not cached"
    return entry


def db_row(pk: Any) -> Profile | None:
    """Return row ``pk`` straight from the database (never through the cache)."""
    return orm().filter(pk=pk).first()


def state(profile: Profile) -> tuple[Any, ...]:
    return (profile.pk, profile.handle, profile.name, profile.score, profile.version)


def assert_cached_is_db(redis: Any, pk: Any) -> Profile:
    """Assert the cache holds exactly the database row; return that row."""
    row = existing(pk)
    entry = cached(redis, pk)
    assert entry is not None, "expected the row to be cached"
    assert state(entry) == state(row)
    return row


def assert_cached_is_db_or_absent(redis: Any, pk: Any) -> None:
    """Assert the cache holds the database row or nothing (never an older row)."""
    entry = cached(redis, pk)
    if entry is None:
        return
    row = db_row(pk)
    assert row is not None, f"row {pk} was deleted but is still cached: {state(entry)}"
    assert state(entry) == state(row)
