"""
System checks for the ``CACHEPATTERNS`` settings, the models and functions using
the app, and its table. ``apps.CachePatternsConfig.ready()`` registers them under
the ``cachepatterns`` tag (and the ``database`` tag for :data:`DATABASE`).

Errors (``cachepatterns.E0xx``) stop ``manage.py`` commands: the configuration
cannot work. Warnings (``cachepatterns.W0xx``) point at something that works but
will surprise you in production. Every message has a hint saying what to change.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.checks import CheckMessage

from cachepatterns_app.checks.database import check_migrated
from cachepatterns_app.checks.models import check_functions, check_models
from cachepatterns_app.checks.settings import (
    check_cache,
    check_isolation,
    check_redis_reachable,
    check_settings,
)
from cachepatterns_app.checks.write_behind import check_write_behind_models, check_write_behind_redis

__all__ = [
    "ALL",
    "DATABASE",
    "check_cache",
    "check_functions",
    "check_isolation",
    "check_migrated",
    "check_models",
    "check_redis_reachable",
    "check_settings",
    "check_write_behind_models",
    "check_write_behind_redis",
]

Check = Callable[..., list[CheckMessage]]

#: Checks run before every management command.
ALL: list[Check] = [
    check_settings,
    check_cache,
    check_redis_reachable,
    check_models,
    check_functions,
    check_isolation,
    check_write_behind_models,
    check_write_behind_redis,
]

#: Checks that query the databases (Django's ``database`` tag).
DATABASE: list[Check] = [check_migrated]
