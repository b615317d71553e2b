"""The refresh-ahead test app: its functions are imported at startup, in every process."""

from __future__ import annotations

from django.apps import AppConfig


class RefreshAppConfig(AppConfig):
    name = "tests.refreshapp"
    label = "refreshapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # What the README asks of users: a Celery worker finds a @refresh_ahead function
        # by name only if its module was imported, so import it whenever Django starts.
        from tests.refreshapp import refreshers  # noqa: F401
