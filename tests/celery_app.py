"""The Celery app the suite's worker processes run (tests.settings, CELERY_* keys)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("cachepatterns_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["tests.testapp", "cachepatterns_app"])
# The current app of every thread, not only of this one: the library enqueues its
# refreshes from whatever thread read the key, and a thread with no current app of
# its own would otherwise fall back to the first app created (the demo project's).
app.set_default()


@app.task(name="tests.ping")
def ping() -> str:
    return "pong"
