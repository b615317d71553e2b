"""
The README's Celery setup works as pasted: its ``yourproject/celery.py`` and
``yourproject/__init__.py`` are copied, unchanged, from README.md into a fresh
project in a temporary directory, and a real ``celery -A yourproject worker -B``
runs ``cachepatterns.retry_invalidations`` on its own schedule — seen by its side
effect (a recorded invalidation is sent to Redis and its record deleted) and in
the worker's log.

The project's settings are the test's (the suite's test database and Redis, a
queue of its own); the only other change is a one-second beat interval for the
task, made the documented way (an entry of the project's own
``CELERY_BEAT_SCHEDULE`` wins over the app's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from cachepatterns_app import pending
from cachepatterns_app.celery import beat_schedule
from cachepatterns_app.models import PendingInvalidation
from demo_project.embedded import celery_url
from tests.support import PATIENCE, readme_block, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def write_project(tmp_path: Path, beat_schedule: dict[str, Any] | None) -> Path:
    package = tmp_path / "yourproject"
    package.mkdir()
    (package / "celery.py").write_text(readme_block("# yourproject/celery.py"), encoding="utf-8")
    (package / "__init__.py").write_text(readme_block("# yourproject/__init__.py"), encoding="utf-8")
    database = {
        key: value
        for key, value in connection.settings_dict.items()
        if key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    }
    lines = [
        'SECRET_KEY = "celery-setup-test"',
        "USE_TZ = True",
        'INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "cachepatterns_app"]',
        f"DATABASES = {{'default': {database!r}}}",
        "CACHES = {'default': {'BACKEND': 'django_redis.cache.RedisCache', "
        f"'LOCATION': {settings.REDIS_URL!r}, "
        "'OPTIONS': {'SOCKET_TIMEOUT': 5, 'SOCKET_CONNECT_TIMEOUT': 5}}}",
        f"CACHEPATTERNS = {{'KEY_PREFIX': {settings.CACHEPATTERNS['KEY_PREFIX']!r}}}",
        f"CELERY_BROKER_URL = {celery_url(settings.REDIS_URL)!r}",
        f"CELERY_TASK_DEFAULT_QUEUE = 'cp-celery-setup-{os.getpid()}'",
    ]
    if beat_schedule is not None:
        lines.append(f"CELERY_BEAT_SCHEDULE = {beat_schedule!r}")
    (package / "settings.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def project_env() -> dict[str, str]:
    # Nothing of the suite's: the snippet itself must say which settings to use.
    return {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("CP_")}


def test_the_readme_snippet_adds_the_apps_periodic_tasks(tmp_path: Path) -> None:
    project = write_project(tmp_path, beat_schedule=None)
    script = (
        "import json; from yourproject import celery_app; print(json.dumps(celery_app.conf.beat_schedule))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    schedule = json.loads(result.stdout)
    # Every entry of the app's (as JSON: the schedule travels through the subprocess's stdout).
    assert schedule == json.loads(json.dumps(beat_schedule()))
    assert schedule["cachepatterns.retry_invalidations"] == {
        "task": "cachepatterns.retry_invalidations",
        "schedule": 30.0,
    }
    # FLUSH_INTERVAL and RECLAIM_IDLE of the settings the snippet's project uses (the defaults).
    assert schedule["cachepatterns.flush_write_behind"] == {
        "task": "cachepatterns.flush_write_behind",
        "schedule": 5.0,
    }
    assert schedule["cachepatterns.reclaim_pending"] == {
        "task": "cachepatterns.reclaim_pending",
        "schedule": 60.0,
    }
    assert schedule["cachepatterns.refresh_hot_keys"] == {
        "task": "cachepatterns.refresh_hot_keys",
        "schedule": 10.0,
        "kwargs": {"interval": 10.0},
    }


def test_a_worker_with_embedded_beat_runs_retry_invalidations(tmp_path: Path, redis: Any) -> None:
    entry = {"task": "cachepatterns.retry_invalidations", "schedule": 1.0}
    project = write_project(tmp_path, beat_schedule={"cachepatterns.retry_invalidations": entry})
    # A failed invalidation recorded by some process that died: only the task sends it.
    key = f"{settings.CACHEPATTERNS['KEY_PREFIX']}:{{celery-setup}}"
    redis.set(key, "stale")
    pending.persist({("DEL", key): "celery-setup"})
    assert PendingInvalidation.objects.count() == 1

    log_path = tmp_path / "worker.log"
    with open(log_path, "w", encoding="utf-8") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "yourproject",
                "worker",
                "-B",
                "-l",
                "info",
                "-c",
                "1",
                "-s",
                str(tmp_path / "celerybeat-schedule"),
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=project,
            env=project_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        ran = wait_until(
            lambda: worker.poll() is not None or not PendingInvalidation.objects.exists(),
            timeout=2 * PATIENCE,
            interval=0.2,
        )
        output = log_path.read_text(encoding="utf-8", errors="replace")
        assert worker.poll() is None, f"the worker exited early:\n{output}"
        assert ran, f"cachepatterns.retry_invalidations never ran:\n{output}"
        assert redis.get(key) is None  # sent: the stale key is gone
        assert wait_until(
            lambda: re.search(
                r"Task cachepatterns\.retry_invalidations\[[^\]]+\] succeeded",
                log_path.read_text(encoding="utf-8", errors="replace"),
            )
        ), log_path.read_text(encoding="utf-8", errors="replace")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=PATIENCE)


def test_the_readme_names_the_broker_setting() -> None:
    assert "CELERY_BROKER_URL" in readme_block(
        "# settings.py: the broker (Celery needs one; a Redis database or RabbitMQ)"
    )
