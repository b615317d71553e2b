"""
Celery integration helpers.

Add the app's periodic tasks to your beat schedule once Celery has read its
configuration (the README's "Celery" section has the whole ``celery.py``)::

    @app.on_after_configure.connect
    def add_cachepatterns_schedule(sender, **kwargs):
        from cachepatterns_app.celery import beat_schedule

        sender.conf.beat_schedule = {**beat_schedule(), **(sender.conf.beat_schedule or {})}

:func:`connect_signals` (called by the app's ``ready()``) ships a worker's cache
statistics when each task ends and when a pool process shuts down: pool processes
leave without running ``atexit`` handlers, and a worker may idle for hours after
its last task.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["beat_schedule", "connect_signals"]

logger = logging.getLogger(__name__)


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Return the periodic task entries the app needs, keyed by entry name."""
    from cachepatterns_app.conf import get_settings

    write_behind = get_settings().WRITE_BEHIND
    return {
        "cachepatterns.retry_invalidations": {
            "task": "cachepatterns.retry_invalidations",
            "schedule": 30.0,
        },
        "cachepatterns.flush_write_behind": {
            "task": "cachepatterns.flush_write_behind",
            "schedule": float(write_behind["FLUSH_INTERVAL"]),
        },
        "cachepatterns.reclaim_pending": {
            "task": "cachepatterns.reclaim_pending",
            "schedule": float(write_behind["RECLAIM_IDLE"]),
        },
        # The interval is passed too: a key is refreshed if it would expire before the next run.
        "cachepatterns.refresh_hot_keys": {
            "task": "cachepatterns.refresh_hot_keys",
            "schedule": 10.0,
            "kwargs": {"interval": 10.0},
        },
    }


def _after_task(**kwargs: Any) -> None:
    from cachepatterns_app import stats
    from cachepatterns_app.exceptions import CachePatternsError

    try:
        # Fire and forget: the worker never waits for Redis here, and while Redis is
        # down the counts stay pending for the next task.
        stats.flush(wait=False)
    except CachePatternsError as e:
        logger.warning("Statistics not sent after the task: %s", e)


def _at_process_shutdown(**kwargs: Any) -> None:
    from cachepatterns_app import stats
    from cachepatterns_app.exceptions import CachePatternsError
    from cachepatterns_app.patterns.write_behind.operations import drain

    try:
        # A warm shutdown finishes what this process was handed: nothing of it waits
        # for RECLAIM_IDLE before another worker takes it over.
        drain()
    except (CachePatternsError, Exception) as e:  # noqa: BLE001 - shutdown must go on
        logger.warning("Write-behind drain at shutdown failed: %s", e)
    stats.ship_at_exit()


def connect_signals() -> None:
    """Ship statistics when a Celery task ends and when a pool process exits (idempotent)."""
    from celery import signals

    signals.task_postrun.connect(_after_task, weak=False, dispatch_uid="cachepatterns.stats.task_postrun")
    signals.worker_process_shutdown.connect(
        _at_process_shutdown, weak=False, dispatch_uid="cachepatterns.stats.worker_process_shutdown"
    )
