"""
Celery integration helpers.

Add the app's periodic tasks to your beat schedule::

    from cachepatterns_app.celery import beat_schedule
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}
"""

from __future__ import annotations

from typing import Any

__all__ = ["beat_schedule"]


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Return the periodic task entries the app needs, keyed by entry name."""
    return {
        "cachepatterns.retry_invalidations": {
            "task": "cachepatterns.retry_invalidations",
            "schedule": 30.0,
        },
    }
