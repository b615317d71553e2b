"""
Celery tasks. Each is a thin shell: the logic lives in the library modules so it
can be called and tested without a worker. Tasks have explicit names so that
renaming a module never orphans queued messages.
"""

from __future__ import annotations

import logging

from celery import shared_task

from cachepatterns_app import invalidation
from cachepatterns_app.celery import connect_signals

__all__ = ["flush_write_behind", "reclaim_pending", "retry_invalidations"]

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
    finds ``BATCH_SIZE`` writes waiting triggers it early. Return the rows written.
    """
    from cachepatterns_app.patterns.write_behind.operations import flush

    invalidation.retry_failed()  # fences recorded during an outage come first
    return flush(model, using=using)


@shared_task(name="cachepatterns.reclaim_pending")
def reclaim_pending() -> int:
    """
    Apply the queued writes that a worker was handed and never acknowledged (it died,
    or the write failed and its backoff is over). Return the rows written.
    """
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from cachepatterns_app.patterns.write_behind.operations import caches

    written = 0
    for cache in caches():
        written += flush_model(cache, cache.db_for(), max_batches=0).rows
    return written
