"""Settings for the django-cacheops comparison process (cacheops patches the ORM globally)."""

from __future__ import annotations

from bench.settings import *  # noqa: F403
from bench.settings import INSTALLED_APPS, REDIS_URL

INSTALLED_APPS = [*INSTALLED_APPS, "cacheops"]
CACHEOPS_REDIS = REDIS_URL
CACHEOPS_PREFIX = "bench.settings_cacheops.prefix"
# Only what the libraries are compared on: a get() by primary key and a page of posts.
CACHEOPS = {
    "bench.plainauthor": {"ops": {"get"}, "timeout": 3600},
    "bench.post": {"ops": {"fetch"}, "timeout": 900},
}
CACHEOPS_DEGRADE_ON_FAILURE = True


def prefix(query: object) -> str:
    """Keep cacheops' keys under the bench's prefix, so the cleanup finds them."""
    return "cpbench-cacheops:"
