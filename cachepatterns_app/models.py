"""
The app's models.

``Stats`` has no table: it exists so that the admin has a page for cache
statistics and the permissions that guard it: ``cachepatterns_app.view_cachestats``
to see it, ``cachepatterns_app.change_cachestats`` for its actions.
``PendingInvalidation`` is the durable copy of invalidations that could not reach
Redis (see ``pending``).
"""

from __future__ import annotations

from django.db import models

__all__ = ["PendingInvalidation", "Stats"]


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
