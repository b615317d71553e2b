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
        from cachepatterns_app.managers import adopt_link_models
        from cachepatterns_app.registry import forget_descendants
        from cachepatterns_app.signals import connect_all

        for check in cp_checks.ALL:
            checks.register(check, "cachepatterns")
        forget_descendants()
        connect_all()
        adopt_link_models()
