"""
Django settings for the benchmark.

The database comes from ``DATABASE_URL`` (default: the local MariaDB, database
``cpbench``, created if missing); Redis from ``REDIS_URL`` (default: database 0 of
the local Redis if it answers, else the embedded one). The bench never flushes a
Redis database: every key it writes starts with ``cpbench`` and is removed by
prefix at the end.
"""

from __future__ import annotations

import os

import dj_database_url

from demo_project.embedded import celery_url, redis_url

SECRET_KEY = "bench-only-not-secret"
DEBUG = False  # DEBUG=True would make every query append to connection.queries
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django.contrib.contenttypes", "cachepatterns_app", "bench"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASE_URL = os.environ.get("DATABASE_URL", "mysql://root@127.0.0.1:3306/cpbench")
_db = dj_database_url.parse(DATABASE_URL)
if _db["ENGINE"].endswith("mysql"):
    _db["OPTIONS"] = {"charset": "utf8mb4"}
DATABASES = {"default": _db}

REDIS_URL = redis_url(db=0)
#: A second, private Redis the bench starts for the 1,000,000-key family benchmark.
SCRATCH_REDIS_URL = os.environ.get("BENCH_SCRATCH_REDIS_URL", "")

_redis_options = {"SOCKET_TIMEOUT": 5.0, "SOCKET_CONNECT_TIMEOUT": 5.0}
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cpbench-dr",
        "OPTIONS": _redis_options,
    }
}
if SCRATCH_REDIS_URL:
    CACHES["scratch"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": SCRATCH_REDIS_URL,
        "KEY_PREFIX": "cpbench-dr",
        "OPTIONS": _redis_options,
    }

# The library's defaults except the prefix: statistics, TTL jitter, JSON and the
# circuit breaker stay on, because that is what a user gets.
CACHEPATTERNS = {"KEY_PREFIX": "cpbench", "DEFAULT_TTL": 3600}

# The refresh-ahead benchmark's worker (bench.celery_app): its broker is the bench's Redis.
CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
