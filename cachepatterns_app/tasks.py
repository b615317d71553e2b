"""
Celery tasks. Each is a thin shell: the logic lives in the library modules so it
can be called and tested without a worker. Tasks have explicit names so that
renaming a module never orphans queued messages.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import DatabaseError

from cachepatterns_app import invalidation
from cachepatterns_app.celery import connect_signals
from cachepatterns_app.exceptions import CacheUnavailable, WriteBehindError

__all__ = [
    "flush_write_behind",
    "reclaim_pending",
    "refresh_hot_keys",
    "refresh_key",
    "refresh_row",
    "retry_invalidations",
]

logger = logging.getLogger(__name__)

# Celery imports this module (autodiscover_tasks) in every worker, whatever the
# order in which Django and Celery were set up: ship statistics at task ends there.
connect_signals()


@shared_task(name="cachepatterns.retry_invalidations")
def retry_invalidations() -> int:
    """
    Send invalidations that could not reach Redis: this worker's own queue, then
    every one recorded in the database by any process. Return how many remain.
    """
    return invalidation.retry_failed()


@shared_task(name="cachepatterns.flush_write_behind")
def flush_write_behind(model: str | None = None, using: str | None = None) -> int:
    """
    Flush the write-behind queue of ``model`` (``"app.model"``; None: every write-behind
    model) to the database. Beat runs it every ``FLUSH_INTERVAL`` seconds; a save that
    finds ``BATCH_SIZE`` writes waiting triggers it early. Return the rows written (0
    when Redis became unavailable during the flush).
    """
    from cachepatterns_app.patterns.write_behind.operations import flush

    try:
        invalidation.retry_failed()  # fences recorded during an outage come first
        return flush(model, using=using, wait_for_repairs=False)
    except CacheUnavailable as e:
        # Nothing is lost: a batch committed but not acknowledged is delivered again
        # and skipped as stale, the rest stays queued. The next beat run flushes it;
        # a raising task would only fill the worker's log with tracebacks.
        logger.warning(
            "Write-behind flush of %s stopped: Redis is unavailable (%s)", model or "every model", e
        )
        return 0


@shared_task(name="cachepatterns.reclaim_pending")
def reclaim_pending() -> int:
    """
    Apply the queued writes that a worker was handed and never acknowledged (it died,
    or the write failed and its backoff is over). Return the rows written (what was
    written before Redis became unavailable, if it did).
    """
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from cachepatterns_app.patterns.write_behind.model import prune_tombstones
    from cachepatterns_app.patterns.write_behind.operations import caches

    written = 0
    for cache in caches():
        try:
            try:
                written += flush_model(cache, cache.db_for(), max_batches=0, wait_for_repairs=False).rows
            except WriteBehindError as e:
                logger.warning("Reclaiming the write-behind writes of %s stopped: %s", cache.label, e)
                continue
            # Tombstones of flushed deletes would otherwise accumulate forever.
            try:
                prune_tombstones(cache, cache.db_for())
            except DatabaseError as e:
                logger.warning("Could not prune the write-behind tombstones of %s: %s", cache.label, e)
        except CacheUnavailable as e:
            # As for flush_write_behind: the pending entries stay pending for the next run.
            logger.warning(
                "Reclaiming the write-behind writes of %s stopped: Redis is unavailable (%s)", cache.label, e
            )
            break
    return written


@shared_task(name="cachepatterns.refresh_key")
def refresh_key(
    name: str, params: dict[str, Any], using: str = "default", token: str = "", generation: str | None = None
) -> str:
    """
    Recompute the ``@refresh_ahead`` function registered as ``name`` for ``params``
    and store the result unless the key was written since the read that scheduled
    this (``token`` is the refresh lease that read took). Return "done", "skipped"
    or "failed"; never raises for a failing loader (the old value stays).
    """
    from cachepatterns_app.patterns.refresh_ahead import refresh_function

    return refresh_function(name, params, using, token, generation)


@shared_task(name="cachepatterns.refresh_row")
def refresh_row(label: str, pk: Any, using: str, token: str) -> str:
    """Reload row ``pk`` of the model ``label`` (``CacheAsideManager(refresh_ahead=…)``) and store it."""
    from cachepatterns_app.patterns import refresh_ahead

    return refresh_ahead.refresh_row(label, pk, using, token)


@shared_task(name="cachepatterns.refresh_hot_keys")
def refresh_hot_keys(interval: float = 10.0) -> int:
    """
    Schedule refreshes of the hottest refresh-ahead keys that would expire before
    the next run (``interval`` seconds, as scheduled); return how many.
    """
    from cachepatterns_app.patterns.refresh_ahead import refresh_hot_keys as refresh

    return refresh(interval)
