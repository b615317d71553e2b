"""
The bench's models: the seed's authors and posts, each in a cached and a plain
variant with identical columns, so that a cached and an uncached operation touch
rows of the same shape.

The tables are created (and dropped first) by ``bench.data`` at the start of a
run; there are no migrations because nothing here outlives a run.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models

from cachepatterns_app import CacheAsideManager, InvalidatingManager, WriteBehindManager, WriteThroughManager
from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

__all__ = [
    "BENCH_MODELS",
    "Author",
    "Ledger",
    "PlainAuthor",
    "PlainLedger",
    "PlainProfile",
    "Post",
    "Profile",
    "QueuedAuthor",
]


class AuthorFields(models.Model):
    """The seed's user row plus the statistics fields it kept next to it."""

    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    bio = models.TextField(blank=True, default="")
    joined = models.DateTimeField()
    last_login = models.DateTimeField(null=True)
    post_count = models.IntegerField(default=0)
    follower_count = models.IntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name


class Author(AuthorFields):
    """Cache-aside: ``objects.get(pk=…)`` is served from Redis."""

    objects = CacheAsideManager(ttl=3600)


class PlainAuthor(AuthorFields):
    """The same row without any caching (also the row cacheops and cachalot cache)."""

    objects: ClassVar[models.Manager[PlainAuthor]] = models.Manager()


class Profile(AuthorFields):
    """Write-through: a committed ``save()`` puts the fresh row, ordered by ``version``."""

    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=3600)


class PlainProfile(AuthorFields):
    """The write-through row's columns without any caching: the baseline of its save()."""

    version = models.PositiveBigIntegerField(default=0)

    objects: ClassVar[models.Manager[PlainProfile]] = models.Manager()


class Ledger(AuthorFields):
    """Write-through with a Decimal column: values the database may round are read back."""

    amount = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=3600)


class PlainLedger(AuthorFields):
    """The ledger's columns without any caching: the baseline of its save()."""

    amount = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    version = models.PositiveBigIntegerField(default=0)

    objects: ClassVar[models.Manager[PlainLedger]] = models.Manager()


class QueuedAuthor(AuthorFields, WriteBehindModel):
    """Write-behind: ``save()`` queues the row in Redis; the flush writes it in batches."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)

    objects = WriteBehindManager(ttl=3600)


class Post(models.Model):
    """The seed's posts, paginated per author by the ``@cache_aside`` page function."""

    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_index=True)

    objects = InvalidatingManager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.title


# Creation order (foreign keys after their targets).
BENCH_MODELS: list[type[models.Model]] = [
    Author,
    PlainAuthor,
    Profile,
    PlainProfile,
    Ledger,
    PlainLedger,
    QueuedAuthor,
    Post,
]
