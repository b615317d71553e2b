"""
The app's configuration: connects signal handlers, registers system checks, and
hooks statistics shipping into Celery's task and process lifecycle.
"""

from __future__ import annotations

import sys

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
        for check in cp_checks.DATABASE:
            checks.register(check, "cachepatterns", checks.Tags.database)
        forget_descendants()
        connect_all()
        adopt_link_models()
        # Only where Celery is loaded already (a worker; a web process that imports its
        # Celery app, as Celery's Django layout does): importing it costs a process
        # that never runs a task 0.1 s. Workers also connect through cachepatterns_app.tasks.
        if "celery" in sys.modules:
            from cachepatterns_app.celery import connect_signals

            connect_signals()
