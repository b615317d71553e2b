"""The app's configuration: connects signal handlers and registers system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

__all__ = ["CachePatternsConfig"]


class CachePatternsConfig(AppConfig):
    name = "cachepatterns_app"
    verbose_name = "Cache patterns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cachepatterns_app import checks as cp_checks
        from cachepatterns_app.signals import connect_all

        for check in cp_checks.ALL:
            checks.register(check, "cachepatterns")
        for check in cp_checks.DATABASE:
            checks.register(check, "cachepatterns", checks.Tags.database)
        connect_all()
