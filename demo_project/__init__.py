"""
The cachepatterns demo project: a small blog (authors, profiles, posts).

The Celery app is imported here, as in Celery's Django example, so that
``@shared_task`` functions bind to it whenever Django starts (web, worker,
management commands).
"""

from demo_project.celery import app as celery_app

__all__ = ["celery_app"]
