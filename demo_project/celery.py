"""
The demo's Celery app, configured from Django settings prefixed ``CELERY_``.

Start a worker with beat embedded::

    celery -A demo_project worker -B -l info
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from cachepatterns_app.celery import beat_schedule

__all__ = ["app"]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

app = Celery("demo_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _add_library_schedule(sender: Celery, **kwargs: Any) -> None:
    # Merged once the configuration is loaded, not at import: reading app.conf here
    # would import Django settings while this package is itself still importing
    # (the settings import demo_project.embedded). Entries the project names itself
    # in CELERY_BEAT_SCHEDULE win over the library's defaults.
    sender.conf.beat_schedule = {**beat_schedule(), **(sender.conf.beat_schedule or {})}
