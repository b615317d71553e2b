"""The demo blog's app configuration."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["BlogConfig"]


class BlogConfig(AppConfig):
    name = "demo_project.blog"
    label = "blog"
    verbose_name = "Blog (cachepatterns demo)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The decorated queries register their depends_on wiring when they are
        # defined. Import them here so that every process — web, Celery worker,
        # management command — invalidates post pages when a Post changes, even one
        # that never calls the queries itself.
        from demo_project.blog import queries  # noqa: F401
