"""
Explicit invalidation: the escape hatch for writes the app cannot see (raw SQL,
``.raw()``, another service writing the same tables).

Both functions respect transactions: inside ``atomic()`` they run after the
outermost commit, and not at all if it rolls back.
"""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.models import Model

from cachepatterns_app.batch import after_commit
from cachepatterns_app.changes import UPDATE, RowChange
from cachepatterns_app.families import Family
from cachepatterns_app.rows import resolve_pks
from cachepatterns_app.writes import record

__all__ = ["flush_write_behind", "invalidate", "invalidate_family"]


def invalidate(target: Model | type[Model], *pks: Any, using: str | None = None) -> None:
    """
    Invalidate cached rows.

    ``invalidate(instance)`` drops that row and every family that depends on it
    (for its current values); ``invalidate(Model, pk1, pk2, …)`` drops those rows.
    Where the database compares primary keys loosely (text under a case-insensitive
    collation) the rows are looked up, so that ``"ABC"`` also drops row ``"abc"``.
    """
    if isinstance(target, Model):
        model = type(target)
        db = using or target._state.db or router.db_for_write(model)
        keys = resolve_pks(model, db, [target.pk, *pks])
        record(RowChange(model, db, keys, UPDATE, new=[target], refresh=False))
        return
    if not pks:
        raise TypeError("invalidate(Model, *pks) needs at least one primary key.")
    db = using or router.db_for_write(target)
    # The primary keys are the caller's spelling: reach the database's own too.
    record(RowChange(target, db, resolve_pks(target, db, list(pks)), UPDATE, refresh=False))


def invalidate_family(template: str, *, using: str | None = None, **params: Any) -> None:
    """Invalidate every cached member of the family ``template`` names with ``params``."""
    db = using or "default"
    after_commit([Family(template).bump(params, db)], db)


def flush_write_behind(model: Any = None, wait: bool = True) -> int:
    """
    Flush the write-behind queue (of ``model`` — a class or ``"app.model"`` — or of every
    write-behind model) to the database now, and return how many rows were written;
    ``wait=False`` schedules the ``cachepatterns.flush_write_behind`` task instead.
    Queries through SQL (filters, counts, admin lists) see queued writes only after it.
    """
    from cachepatterns_app.patterns.write_behind.operations import flush

    return flush(model, wait=wait)
