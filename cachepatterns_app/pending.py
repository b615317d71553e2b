"""
The durable copy of invalidations that could not reach Redis.

The process that failed keeps them in memory and sends them before anything else
once Redis answers (``invalidation``). That process may die first, and other
processes may read the stale keys meanwhile, so each failed command is also
written to the database — which just committed, so it is up — and the
``cachepatterns.retry_invalidations`` task sends and deletes whatever is recorded
there, from any process.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.apps import apps
from django.db import DatabaseError, router

__all__ = ["as_command", "forget", "load", "persist", "summary"]

logger = logging.getLogger(__name__)

Command = tuple[Any, ...]


def _digest(command: Command) -> str:
    return hashlib.sha256(json.dumps(command, separators=(",", ":")).encode()).hexdigest()


def as_command(stored: Any) -> Command:
    """Return the command tuple that ``stored`` (its JSON form) describes."""
    return tuple(as_command(part) if isinstance(part, list) else part for part in stored)


def _model() -> Any:
    # Without the app in INSTALLED_APPS its model cannot even be imported: there is
    # nowhere to record, and conf warns about that on first use.
    if not apps.is_installed("cachepatterns_app"):
        return None
    from cachepatterns_app.models import PendingInvalidation

    return PendingInvalidation


def persist(commands: Mapping[Command, str]) -> None:
    """Record ``commands`` (with their labels); never raises."""
    model = _model()
    if model is None:
        logger.error(
            "Could not record %d failed invalidation(s): 'cachepatterns_app' is not in "
            "INSTALLED_APPS, so other processes may serve the stale rows until they expire.",
            len(commands),
        )
        return
    rows = [model(digest=_digest(c), command=list(c), label=label[:255]) for c, label in commands.items()]
    try:
        model.objects.using(router.db_for_write(model)).bulk_create(rows, ignore_conflicts=True)
    except DatabaseError as e:
        logger.error(
            "Could not record %d failed invalidation(s) in the database: %s (if the table %s does "
            "not exist, run `manage.py migrate`; check cachepatterns.W007 says so)",
            len(rows),
            e,
            model._meta.db_table,
        )


def load(limit: int = 1000) -> dict[Command, tuple[int, str]]:
    """Return up to ``limit`` recorded commands, as ``{command: (row id, label)}``."""
    model = _model()
    if model is None:
        return {}
    rows = model.objects.using(router.db_for_write(model)).order_by("id")[:limit]
    return {as_command(row.command): (row.id, row.label) for row in rows}


def summary() -> tuple[int, Any]:
    """Return how many invalidations are recorded and when the oldest was (None: none)."""
    model = _model()
    if model is None:
        return 0, None
    rows = model.objects.using(router.db_for_write(model))
    oldest = rows.order_by("created").values_list("created", flat=True).first()
    return rows.count(), oldest


def forget(commands: Iterable[Command]) -> None:
    """Delete the records of ``commands`` (they reached Redis); never raises."""
    model = _model()
    digests = [_digest(c) for c in commands]
    if not digests or model is None:
        return
    try:
        model.objects.using(router.db_for_write(model)).filter(digest__in=digests).delete()
    except DatabaseError as e:
        logger.warning("Could not delete %d sent invalidation record(s): %s", len(digests), e)
