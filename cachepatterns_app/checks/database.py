"""
Checks that query the databases, registered with Django's ``database`` tag: they
run under ``manage.py check --database <alias>``, ``migrate`` and the test runner,
not before every command (Django 6 also runs them for ``check --tag cachepatterns``).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Warning
from django.db import DatabaseError, connections, router

__all__ = ["check_migrated"]


def check_migrated(*, databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """
    Warn when the table of ``PendingInvalidation`` is missing from a database it
    belongs to: forgetting ``migrate`` would otherwise surface only during a Redis
    outage, when the durable record of a failed invalidation cannot be written.

    A warning, not an error: ``migrate`` runs these checks before migrating, and an
    error would stop the very command that fixes it.
    """
    from cachepatterns_app.models import PendingInvalidation

    table = PendingInvalidation._meta.db_table
    out: list[CheckMessage] = []
    for alias in databases or ():
        if not router.allow_migrate_model(alias, PendingInvalidation):
            continue
        try:
            with connections[alias].cursor() as cursor:
                tables = connections[alias].introspection.table_names(cursor)
        except DatabaseError:
            continue  # an unreachable database is reported by whatever needs it first
        if table not in tables:
            out.append(
                Warning(
                    f"Database {alias!r} has no table {table!r}: cachepatterns cannot record "
                    "invalidations that fail to reach Redis there, so after an outage stale rows "
                    "would be served once the process that failed exits.",
                    hint=f"Run `manage.py migrate cachepatterns_app --database {alias}` (or just "
                    "`manage.py migrate`; when migrate itself prints this, it is about to create it).",
                    id="cachepatterns.W007",
                )
            )
    return out
