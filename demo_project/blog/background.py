"""
A Celery worker for the length of a ``cachepatterns_demo`` step: the refresh-ahead
story needs one to recompute values in the background.

It is the worker a project runs (``celery -A demo_project worker``), on a queue of
this demo run's own, so that a worker you started yourself neither takes the
demo's refreshes nor is disturbed by them; the queue is deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

__all__ = ["WorkerUnavailable", "background_worker"]

#: How long the worker may take to start (a busy machine, a cold import cache).
START_LIMIT = 60.0


class WorkerUnavailable(RuntimeError):
    """The demo's Celery worker did not start; the message holds its log."""


@contextlib.contextmanager
def background_worker() -> Iterator[str]:
    """Run a solo Celery worker on a queue of this process's own; yield the queue name."""
    from demo_project.celery import app

    queue = f"cpdemo-refresh-{os.getpid()}"
    node = f"{queue}@{socket.gethostname()}"
    previous = app.conf.task_default_queue
    log = tempfile.NamedTemporaryFile("w+", prefix="cpdemo-worker-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "demo_project",
            "worker",
            "-P",
            "solo",
            "-Q",
            queue,
            "-n",
            node,
            "-l",
            "warning",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=Path(settings.BASE_DIR),
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "demo_project.settings"),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(app, node, process, log.name)
        # Every task this process enqueues (the refreshes) goes to the demo's worker.
        app.conf.task_default_queue = queue
        yield queue
    finally:
        app.conf.task_default_queue = previous
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # warm shutdown: a running refresh finishes
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(Exception), app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)  # refreshes nobody will run
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def _wait_ready(app: object, node: str, process: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + START_LIMIT
    while True:
        if process.poll() is not None:
            raise WorkerUnavailable(
                f"the Celery worker exited early:\n{Path(log).read_text(errors='replace')}"
            )
        with contextlib.suppress(Exception):
            if app.control.ping(destination=[node], timeout=1.0):  # type: ignore[attr-defined]
                return
        if time.monotonic() > deadline:
            raise WorkerUnavailable(
                f"the Celery worker did not answer within {START_LIMIT:.0f} s:\n"
                + Path(log).read_text(errors="replace")
            )
        time.sleep(0.2)
