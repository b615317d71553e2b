"""
Settings for the test suite.

The database comes from ``DATABASE_URL`` (default: a SQLite file, so the suite
runs on a machine that has only Python); Redis from ``REDIS_URL`` (default: the
local server if it answers, else the embedded one, using database 15). Before
every test the suite deletes the keys under ``KEY_PREFIX`` (``cpt``) — never the
whole database, whose Celery queues must survive — so point ``REDIS_URL`` at a
database nothing else uses (never database 0, the demo's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

from demo_project.embedded import celery_url, redis_url

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "Europe/Paris"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.staticfiles",
    "cachepatterns_app",
    "tests.testapp",
    "tests.refreshapp",
    "demo_project.blog",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_db = dj_database_url.parse(os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'test.sqlite3'}")
if _db["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that threads in concurrency tests share the data.
    _db["TEST"] = {"NAME": str(BASE_DIR / f"test-{os.getpid()}.sqlite3")}
    _db["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
elif _db["ENGINE"].endswith("mysql"):
    _db["OPTIONS"] = {"charset": "utf8mb4"}
    _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
if os.environ.get("CP_WORKER_DB_NAME"):
    # A Celery worker started by the suite must use the suite's test database.
    _db["NAME"] = os.environ["CP_WORKER_DB_NAME"]
# A second database, SQLite on every leg: the multi-database tests prove that writes on
# one alias never change what another alias reads (keys carry the database's identity).
_other: dict[str, object] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(BASE_DIR / "other.sqlite3"),
    "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    "TEST": {"NAME": str(BASE_DIR / f"test-other-{os.getpid()}.sqlite3")},
}
if os.environ.get("CP_WORKER_OTHER_DB_NAME"):
    _other["NAME"] = os.environ["CP_WORKER_OTHER_DB_NAME"]
DATABASES = {"default": _db, "other": _other}
DATABASE_ROUTERS = ["tests.testapp.routers.CollationRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url(db=15)
if REDIS_URL.startswith("unix://") and "db=" not in REDIS_URL:
    REDIS_URL += "?db=15"

# CP_CACHE_BACKEND=django runs the suite on Django's own RedisCache instead of
# django-redis (the app must work on both; .ci/run runs a leg of each).
if os.environ.get("CP_CACHE_BACKEND") == "django":
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"SOCKET_TIMEOUT": 1.0, "SOCKET_CONNECT_TIMEOUT": 1.0},
        }
    }

#: CP_REDIS_CLUSTER (comma-separated node URLs, set by ``python -m tests.cluster run``)
#: puts the cache on a Redis Cluster through the app's ClusterClient; Celery's broker
#: stays on REDIS_URL (kombu has no cluster transport).
REDIS_CLUSTER = os.environ.get("CP_REDIS_CLUSTER", "")


def cluster_cache(location: str) -> dict[str, Any]:
    """Return a CACHES entry for the cluster whose nodes ``location`` names."""
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": {
            "CLIENT_CLASS": "cachepatterns_app.cluster.ClusterClient",
            "SOCKET_TIMEOUT": 1.0,
            "SOCKET_CONNECT_TIMEOUT": 1.0,
        },
    }


if REDIS_CLUSTER:
    CACHES = {"default": cluster_cache(REDIS_CLUSTER)}

CACHEPATTERNS = {"KEY_PREFIX": "cpt", "DEFAULT_TTL": 300}

# The broker shares the test Redis database: the suite only ever deletes keys under
# KEY_PREFIX, never the whole database, so queues survive between tests.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", celery_url(REDIS_URL))
CELERY_RESULT_BACKEND = celery_url(REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CP_CELERY_QUEUE", "cachepatterns-tests")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"cachepatterns_app": {"handlers": ["null"], "level": "DEBUG"}},
}

# The suite's Redis keeps nothing on disk (CI's, and the embedded one): W010 says so
# on every command. It is tested directly, against a Redis with and without AOF.
SILENCED_SYSTEM_CHECKS = ["cachepatterns.W010"]
