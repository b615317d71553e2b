"""
The app's models.

``Stats`` has no table: it exists so that the admin has a page for cache
statistics and the permissions that guard it: ``cachepatterns_app.view_cachestats``
to see it, ``cachepatterns_app.change_cachestats`` for its actions.
``PendingInvalidation`` is the durable copy of invalidations that could not reach
Redis (see ``pending``). ``WriteBehindModel`` is the abstract base of models saved
write-behind; ``WriteBehindTombstone`` remembers the sequence of flushed deletes,
so that an older write delivered again cannot bring a deleted row back.
"""

from __future__ import annotations

import uuid

from django.db import models

__all__ = [
    "PendingInvalidation",
    "Stats",
    "WriteBehindFence",
    "WriteBehindIncrement",
    "WriteBehindModel",
    "WriteBehindTombstone",
]


class Stats(models.Model):
    """Placeholder for the cache-statistics admin page and its permission."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_cachestats", "Can view cache statistics"),
            ("change_cachestats", "Can act on the cache (flush, replay, purge, invalidate, reset)"),
        ]
        verbose_name = "cache statistics"
        verbose_name_plural = "cache statistics"

    def __str__(self) -> str:
        return "cache statistics"


class PendingInvalidation(models.Model):
    """An invalidation that could not reach Redis, kept until one is sent."""

    digest = models.CharField(max_length=64, unique=True)
    command = models.JSONField()
    label = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_permissions = ("view", "delete")
        verbose_name = "pending invalidation"

    def __str__(self) -> str:
        return f"{self.label}: {self.command}"


class WriteBehindTombstone(models.Model):
    """The write-behind sequence at which a row was deleted."""

    label = models.CharField(max_length=255)
    pk_text = models.CharField(max_length=255)
    seq = models.BigIntegerField()
    created = models.DateTimeField(auto_now=True)

    class Meta:
        default_permissions = ("view",)
        verbose_name = "write-behind tombstone"
        constraints = [models.UniqueConstraint(fields=["label", "pk_text"], name="cp_wb_tombstone_row")]

    def __str__(self) -> str:
        return f"{self.label}:{self.pk_text} deleted at {self.seq}"


class WriteBehindFence(models.Model):
    """A row written to the database directly while Redis was unreachable (see write_behind.model)."""

    label = models.CharField(max_length=255)
    db_alias = models.CharField(max_length=100)
    pk_text = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_permissions = ("view",)
        verbose_name = "write-behind fence"
        constraints = [
            models.UniqueConstraint(fields=["label", "db_alias", "pk_text"], name="cp_wb_fence_row")
        ]

    def __str__(self) -> str:
        return f"{self.label}:{self.pk_text} on {self.db_alias}"


def new_increment_token() -> str:
    """The random name of a recorded increment's mark in Redis (ids can be reused; this is not)."""
    return uuid.uuid4().hex


class WriteBehindIncrement(models.Model):
    """
    An ``incr()`` accepted while Redis was unreachable, waiting to be added to the row
    in Redis (and so flushed) once Redis is back (see write_behind.model).
    """

    label = models.CharField(max_length=255)
    db_alias = models.CharField(max_length=100)
    pk_text = models.CharField(max_length=255)
    field = models.CharField(max_length=255)
    amount = models.BigIntegerField()
    token = models.CharField(max_length=32, default=new_increment_token, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_permissions = ("view",)
        verbose_name = "write-behind increment"
        indexes = [models.Index(fields=["label", "db_alias", "pk_text"], name="cp_wb_increment_row")]

    def __str__(self) -> str:
        return f"{self.label}:{self.pk_text}.{self.field} += {self.amount} on {self.db_alias}"


from cachepatterns_app.patterns.write_behind.model import WriteBehindModel  # noqa: E402
