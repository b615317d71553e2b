"""
A real Celery worker for the demo's write-behind step: started for the flush, stopped
after it. It uses the demo's settings (database, Redis, broker) through the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["celery_worker"]

ROOT = Path(__file__).resolve().parent.parent.parent


@contextmanager
def celery_worker(queue: str, ready_within: float = 60.0) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run a solo worker on ``queue``; yield its process (None if it did not come up)."""
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
            "-l",
            "warning",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "demo_project.settings"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from demo_project.celery import app

        deadline = time.monotonic() + ready_within
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            replies = app.control.inspect(timeout=1.0, destination=None).active_queues() or {}
            if any(any(q.get("name") == queue for q in queues) for queues in replies.values()):
                ready = True
                break
        yield process if ready else None
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
