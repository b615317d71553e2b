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

__all__ = ["retry_invalidations"]

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
