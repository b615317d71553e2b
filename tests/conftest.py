"""Fixtures shared by the whole suite: a clean Redis database and clean app state per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from cachepatterns_app import invalidation, stats, store


@pytest.fixture
def redis() -> Any:
    """The raw redis-py client of the test Redis database."""
    # Through the app's own store: the same client on django-redis and Django's RedisCache.
    return store.get_store("default").client


@pytest.fixture(autouse=True)
def _clean_state(redis: Any) -> Iterator[None]:
    store.reset()
    # Only the app's keys: the Celery broker shares this Redis database.
    prefix = settings.CACHEPATTERNS["KEY_PREFIX"]
    stale = list(redis.scan_iter(match=f"{prefix}:*", count=1000))
    if stale:
        redis.delete(*stale)
    with stats._lock:
        stats._discard_local()
    with invalidation._failed_lock:
        invalidation._failed.clear()
    yield
    store.reset()


@pytest.fixture
def counts() -> Any:
    """Return a function giving this process's stats counts for one label."""

    def read(label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for field, n in stats.local_counts().items():
            name, _, event = field.rpartition("|")
            if name == label:
                out[event] = n
        return out

    return read


class Worker:
    """A real Celery worker process consuming this test session's queue."""

    def __init__(self, process: Any, queue: str, app: Any, log: Any) -> None:
        self.process = process
        self.queue = queue
        self.app = app
        self.log = log
        #: The app's default queue before this worker took it over; given back on stop.
        self.previous_default_queue: str | None = None

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()


def start_worker(
    queue: str, *, pool: str = "solo", concurrency: int = 1, extra_env: dict[str, str] | None = None
) -> Worker:
    """
    Start a worker on ``queue`` (``concurrency`` processes of ``pool``) using the
    session's test database; wait until it answers.
    """
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from django.db import connection, connections

    from tests.celery_app import app, ping

    previous_default_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CP_WORKER_DB_NAME": str(connection.settings_dict["NAME"]),
        "CP_WORKER_OTHER_DB_NAME": str(connections["other"].settings_dict["NAME"]),
        "CP_CELERY_QUEUE": queue,
        "REDIS_URL": settings.REDIS_URL,
        **(extra_env or {}),
    }
    log = tempfile.NamedTemporaryFile("w+", prefix="celery-worker-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-l",
            "info",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = Worker(process, queue, app, log)
    worker.previous_default_queue = previous_default_queue
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Celery worker exited early:\n{worker.output()}")
        try:
            if ping.apply_async(queue=queue).get(timeout=2) == "pong":
                return worker
        except Exception:
            if time.monotonic() > deadline:
                stop_worker(worker)
                raise
        time.sleep(0.2)


def stop_worker(worker: Worker, *, kill: bool = False) -> None:
    import signal

    # Tasks published by the code under test (refreshes, early flushes) go to the
    # default queue: hand it back, or later tests would publish to a stopped worker.
    if worker.app.conf.task_default_queue == worker.queue and worker.previous_default_queue:
        worker.app.conf.task_default_queue = worker.previous_default_queue
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            worker.process.wait(timeout=20)
        except Exception:
            worker.process.kill()
            worker.process.wait(timeout=10)


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Worker]:
    """One real worker process for the session (tests using it need transaction=True)."""
    import os

    worker = start_worker(f"cp-tests-{os.getpid()}")
    yield worker
    stop_worker(worker)


@pytest.fixture
def forget() -> Any:
    """Models a test defines (isolate_apps): their row caches are dropped from the registry after it."""
    from cachepatterns_app import registry

    made: list[Any] = []
    yield made
    with registry._lock:
        for model in made:
            registry._row_caches.pop(model, None)
