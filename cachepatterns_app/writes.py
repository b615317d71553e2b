"""
Turn one :class:`~cachepatterns_app.changes.RowChange` into the Redis work of every
cache it affects, scheduled after commit.

A change to rows of model ``M`` affects:

- the row cache of ``M``'s table (declared on ``M``, on its concrete model, or on
  any proxy of it): those rows changed;
- the row caches of ``M``'s multi-table parents: a child's write also wrote its
  parents' rows (same primary key);
- the row caches of ``M``'s multi-table descendants: their cached rows hold ``M``'s
  columns, so a parent's write makes them stale;
- every family that depends on ``M`` (or on a class sharing its table, a parent or
  a descendant), for the values the rows had before and have after the write.

Each cache turns the change into commands (drop, tombstone) and after-commit
callbacks (write-through puts); everything of one transaction goes out in one
batch (``batch``), ahead of the transaction's other on-commit hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import models
from django.db.models import Model

from cachepatterns_app.batch import after_commit
from cachepatterns_app.changes import DELETE, LINK, SAVE, RowChange
from cachepatterns_app.identity import NotCanonical
from cachepatterns_app.invalidation import Command
from cachepatterns_app.registry import (
    Dependency,
    dependencies_of,
    descendants_of,
    own_dependencies_of,
    table_cache,
)

__all__ = ["affected_caches", "fresh_rows", "record", "watched"]

logger = logging.getLogger(__name__)

SELF, PARENT, CHILD = "self", "parent", "child"


def watched(model: type[Model]) -> bool:
    """Return whether any cache depends on rows of ``model``."""
    return bool(affected_caches(model)) or bool(dependencies_of(model)) or _descendant_dependencies(model)


def affected_caches(model: type[Model]) -> list[tuple[str, Any]]:
    """Return ``(relation, row cache)`` for every row cache a write of ``model`` reaches."""
    concrete = model._meta.concrete_model or model
    tables = [
        (SELF, concrete),
        *((PARENT, parent) for parent in concrete._meta.get_parent_list()),
        *((CHILD, child) for child in descendants_of(concrete)),
    ]
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for relation, table in tables:
        cache = table_cache(table)
        if cache is not None and cache.label not in seen:
            seen.add(cache.label)
            out.append((relation, cache))
    return out


def _descendant_dependencies(model: type[Model]) -> bool:
    return any(own_dependencies_of(child) for child in descendants_of(model))


def record(change: RowChange) -> None:
    """Schedule everything ``change`` invalidates, refreshes or bumps, after its commit."""
    commands: list[tuple[Command, str]] = []
    callbacks: list[Callable[[], None]] = []
    labels: list[str] = []
    if change.kind != LINK:
        for relation, cache in affected_caches(change.model):
            if not change.own and relation == SELF:
                continue
            labels.append(cache.label)
            callback = _row_work(cache, relation, change, commands)
            if callback is not None:
                callbacks.append(callback)
    commands.extend(_family_work(change))
    if commands or callbacks or labels:
        # Even with nothing to send (a bulk insert that returned no primary keys), the
        # transaction must be known to have written these models: no fills from it.
        after_commit(commands, change.using, _chain(callbacks), labels=labels)


def _row_work(cache: Any, relation: str, change: RowChange, commands: list[tuple[Command, str]]) -> Any:
    pks, using = change.pks, change.using
    if change.kind == DELETE:
        commands.extend(cache.deletion(pks, using))
        return None
    if relation == CHILD:
        commands.extend(cache.invalidation(pks, using))
        return cache.ancestor_written(change.model, pks, using) if change.refresh else None
    if change.kind == SAVE and change.instance is not None:
        more, callback = cache.saved(change.instance, using, change.update_fields, pks[0])
        commands.extend(more)
        return callback
    commands.extend(cache.invalidation(pks, using))
    return cache.bulk_written(pks, using) if change.refresh else None


def _family_work(change: RowChange) -> list[tuple[Command, str]]:
    out: list[tuple[Command, str]] = []
    rows = [*change.old, *change.new]
    for dependency in dependencies_of(change.model):
        out.extend(_bumps(dependency, rows, change.using))
    if change.kind in (DELETE, LINK) or not change.pks:
        # A parent's delete cascades to its descendants, which report themselves.
        return out
    for child in descendants_of(change.model):
        dependencies = own_dependencies_of(child)
        if not dependencies:
            continue
        # Their rows after the write, and before it as far as the parent's old rows
        # tell (a parent's write cannot change a child's own columns).
        after: list[Model] = list(models.QuerySet(child, using=change.using).filter(pk__in=list(change.pks)))
        for dependency in dependencies:
            out.extend(_bumps(dependency, [*change.old, *after], change.using, lenient=True))
    return out


def _bumps(
    dependency: Dependency, rows: Iterable[Model], using: str, *, lenient: bool = False
) -> list[tuple[Command, str]]:
    out = []
    for row in rows:
        try:
            for params in dependency.params(row):
                out.append(dependency.family.bump(params, using))
        except AttributeError:
            if not lenient:
                raise
        except (TypeError, NotCanonical) as e:
            # After the write, never raise: a value that cannot be keyed cannot have
            # been cached under that family either.
            logger.error("Cannot invalidate %r for a %s row: %s", dependency.family, type(row).__name__, e)
    return out


def _chain(callbacks: list[Callable[[], None]]) -> Callable[[], None] | None:
    if len(callbacks) < 2:
        return callbacks[0] if callbacks else None

    def run_all() -> None:
        for callback in callbacks:
            callback()

    return run_all


def fresh_rows(
    model: type[Model], using: str, rows: Sequence[Model], fields: Iterable[str] | None
) -> list[Model]:
    """
    Return ``rows``, or the same rows read again from the database if any of
    ``fields`` (None: any concrete field) holds an expression (``F()``, ``Upper()``…):
    families are keyed by what the database stored, never by the expression.
    """
    names = list(fields) if fields is not None else [f.attname for f in model._meta.concrete_fields]
    if not any(hasattr(row.__dict__.get(name), "resolve_expression") for row in rows for name in names):
        return list(rows)
    pks = [row.pk for row in rows]
    query: models.QuerySet[Any, Any] = models.QuerySet(model, using=using).filter(pk__in=pks)
    return list(query)
