"""Rows refreshed ahead of their expiry."""

from __future__ import annotations

from django.db import models

from cachepatterns_app import CacheAsideManager


class Headline(models.Model):
    owner = models.IntegerField(db_index=True)
    title = models.CharField(max_length=200)

    objects = CacheAsideManager(ttl=60, refresh_ahead=0.2)

    def __str__(self) -> str:
        return self.title
