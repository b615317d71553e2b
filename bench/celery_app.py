"""The Celery app of the refresh-ahead benchmark's worker (``bench.settings``, ``CELERY_*`` keys)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("cachepatterns_bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["cachepatterns_app"])
# The functions it refreshes, found by name: imported once Django is set up.
app.autodiscover_tasks(["bench"], related_name="refreshed")
