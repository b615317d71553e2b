"""The Celery app the suite's worker processes run (tests.settings, CELERY_* keys)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("cachepatterns_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["tests.testapp", "cachepatterns_app"])


@app.task(name="tests.ping")
def ping() -> str:
    return "pong"
