"""
Read what a write needs to know about its rows from the database, inside the
write's transaction: their values before the write (so a row that moves between
owners invalidates both owners' families) and their primary keys as the database
spells them (so a write by another spelling still reaches the cached row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, models
from django.db.models import Model

from cachepatterns_app.registry import dependencies_of, descendants_of, own_dependencies_of, table_cache

__all__ = ["dependency_fields", "has_dependants", "old_rows", "resolve_pks", "spelling_is_trusted"]


def dependency_fields(model: type[Model]) -> set[str] | None:
    """
    Return the attribute names the dependencies of ``model`` read (None: the whole
    row), including those of its multi-table descendants that live on ``model``.
    """
    names: set[str] = set()
    for dependency in dependencies_of(model):
        if not dependency.fields:
            return None
        names.update(dependency.fields)
    local = {f.attname for f in model._meta.concrete_fields}
    for child in descendants_of(model):
        for dependency in own_dependencies_of(child):
            if not dependency.fields:
                return None
            names.update(name for name in dependency.fields if name in local)
    return names


def has_dependants(model: type[Model]) -> bool:
    """Return whether families depend on rows of ``model`` (itself, its parents or descendants)."""
    return bool(dependencies_of(model)) or any(own_dependencies_of(c) for c in descendants_of(model))


def old_rows(queryset: models.QuerySet[Any]) -> list[Model]:
    """
    Return the rows of ``queryset`` as they are before a write, loading only the
    fields the dependencies read (nothing if the model has no dependencies).
    Inside a transaction the rows are locked until commit, so no concurrent writer
    can move them between this read and the write.
    """
    model = queryset.model
    if not has_dependants(model):
        return []
    own: Any = queryset
    if own._fields is not None or queryset.query.select_related or queryset.query.deferred_loading[0]:
        # values(), select_related() or only() would clash with the only() below:
        # select the same rows as plain model rows.
        queryset = models.QuerySet(model, using=queryset.db).filter(pk__in=queryset.values("pk"))
    fields = dependency_fields(model)
    if fields:
        queryset = queryset.only(*fields)
    connection = connections[queryset.db]
    if connection.in_atomic_block and connection.features.has_select_for_update:
        queryset = in_lock_order(queryset).select_for_update()
    return list(queryset)


def in_lock_order(queryset: models.QuerySet[Any, Any]) -> models.QuerySet[Any, Any]:
    """
    Return ``queryset`` ordered by primary key, when that does not change which rows it
    selects: two transactions that lock overlapping rows in the same order cannot
    deadlock (PostgreSQL locks a bitmap scan's rows in heap order otherwise).
    """
    query = queryset.query
    if query.is_sliced or query.distinct_fields:
        return queryset  # its order decides which rows it selects
    return queryset.order_by("pk")


def spelling_is_trusted(model: type[Model], using: str) -> bool:
    """
    Return whether a primary key given by the caller (not read from the database)
    is always the database's own spelling of it on ``using``: true for integers,
    UUIDs and exact collations, false for text under a case- or accent-insensitive
    collation, where ``"ABC"`` may name row ``"abc"``.
    """
    cache = table_cache(model)
    return cache is None or cache.pk_is_exact(using)


def resolve_pks(model: type[Model], using: str, pks: Sequence[Any]) -> list[Any]:
    """
    Return ``pks`` together with the database's own spellings of the rows they match
    (read in the write's transaction), for writes whose primary keys came from the
    caller rather than from the database.
    """
    if not pks or spelling_is_trusted(model, using):
        return list(pks)
    found: Any = models.QuerySet(model, using=using).filter(pk__in=list(pks)).values_list("pk", flat=True)
    out = list(pks)
    for pk in found:
        if pk not in out:
            out.append(pk)
    return out
