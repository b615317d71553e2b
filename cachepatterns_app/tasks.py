"""
Celery tasks. Each is a thin shell: the logic lives in the library modules so it
can be called and tested without a worker. Tasks have explicit names so that
renaming a module never orphans queued messages.
"""

from __future__ import annotations

import logging

from celery import shared_task

from cachepatterns_app import invalidation

__all__ = ["retry_invalidations"]

logger = logging.getLogger(__name__)


@shared_task(name="cachepatterns.retry_invalidations", ignore_result=True)
def retry_invalidations() -> int:
    """Send invalidations this worker queued while Redis was down; return how many remain."""
    return invalidation.retry_failed()
