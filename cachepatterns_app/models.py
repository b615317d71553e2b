"""
The app's models. ``Stats`` has no table: it exists so that the admin has a page
for cache statistics and a permission (``cachepatterns_app.view_cachestats``) to
guard it.
"""

from __future__ import annotations

from django.db import models

__all__ = ["Stats"]


class Stats(models.Model):
    """Placeholder for the cache-statistics admin page and its permission."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_cachestats", "Can view cache statistics")]
        verbose_name = "cache statistics"
        verbose_name_plural = "cache statistics"

    def __str__(self) -> str:
        return "cache statistics"
