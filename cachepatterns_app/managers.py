"""
The managers and querysets that opt a model into caching.

``CacheAsideManager`` and ``WriteThroughManager`` serve ``get(pk=…)``,
``get(<unique field>=…)`` and ``get_many(pks)`` from Redis; every other query
passes straight to the database. Their querysets also report bulk writes
(``update``, ``bulk_create``, ``bulk_update``) so that those invalidate exactly the
rows they touched. ``InvalidatingManager`` does only the latter, for models that
are not cached themselves but that cached results depend on (``depends_on``).

Nothing here patches Django: a model opts in by declaring the manager.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from django.db import connections, models, router, transaction
from django.db.models import Model, Q
from django.db.models.manager import BaseManager
from django.db.models.query import ModelIterable
from django.db.models.signals import class_prepared
from django.dispatch import receiver

from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.invalidation import has_pending_writes
from cachepatterns_app.leases import UNSET
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.registry import dependencies_of, has_own_row_cache, register_row_cache, row_cache_for
from cachepatterns_app.signals import connect_model, old_rows, rows_changed
from cachepatterns_app.validation import validate_ttl

__all__ = [
    "CacheAsideManager",
    "CachedQuerySet",
    "InvalidatingManager",
    "InvalidatingQuerySet",
    "WriteThroughManager",
]

M = TypeVar("M", bound=Model)

_PASS: Any = object()
_PK_NAMES = ("pk", "pk__exact")


def _watched(model: type[Model]) -> bool:
    if row_cache_for(model) is not None or dependencies_of(model):
        return True
    return any(row_cache_for(parent) is not None for parent in model._meta.get_parent_list())


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class InvalidatingQuerySet(models.QuerySet[M]):
    """A queryset whose bulk writes invalidate what depends on the rows they touch."""

    def _write_db(self) -> str:
        own: Any = self  # _db and _hints are private QuerySet attributes the stubs omit
        return own._db or router.db_for_write(self.model, **own._hints)

    def update(self, **kwargs: Any) -> int:
        """Update the matching rows, then invalidate exactly those rows after commit."""
        if not _watched(self.model):
            return super().update(**kwargs)
        db = self._write_db()
        cache = row_cache_for(self.model)
        if cache is not None:
            kwargs = cache.update_kwargs(kwargs)
        batch = connections[db].ops.bulk_batch_size(["pk"], []) or 1000
        with transaction.atomic(using=db, savepoint=False):
            # Lock the rows first: the set we invalidate is then exactly the set we
            # update, and their "before" values cannot change under us.
            if dependencies_of(self.model):
                old = old_rows(self)
                pks = [row.pk for row in old]
            else:
                old = []
                locked = self.select_for_update() if connections[db].features.has_select_for_update else self
                pks = list(locked.values_list("pk", flat=True))
            count = 0
            base: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=db)
            for chunk in _chunks(pks, max(1, min(batch, 2000))):
                count += base.filter(pk__in=chunk).update(**kwargs)
            new = old_rows(base.filter(pk__in=pks)) if old and _touched(self.model, kwargs) else old
            rows_changed(self.model, db, pks, old=old, new=new)
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        """Insert ``objs``, then invalidate what depends on them after commit."""
        if not _watched(self.model):
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        db = self._write_db()
        match = _conflict_target(self.model, objs, kwargs) if kwargs.get("update_conflicts") else None
        if match is None:
            created = super().bulk_create(objs, *args, **kwargs)
            pks = [obj.pk for obj in created if obj.pk is not None]
            rows_changed(self.model, db, pks, new=created)
            return created
        # An upsert rewrites existing rows, whose primary keys the database may not
        # return: find the rows by the conflict target, before (old owners) and after.
        base: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=db).filter(match)
        cache = row_cache_for(self.model)
        with transaction.atomic(using=db, savepoint=False):
            old = old_rows(base)
            created = super().bulk_create(objs, *args, **kwargs)
            if cache is not None:
                cache.after_upsert(base)
            pks = list(base.values_list("pk", flat=True))
            rows_changed(self.model, db, pks, old=old, new=created)
        return created

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def bulk_update(self, objs: Iterable[M], fields: Iterable[str], batch_size: int | None = None) -> int:
        """Update ``fields`` of ``objs``, then invalidate those rows after commit."""
        objs = list(objs)
        if not _watched(self.model) or not objs:
            return super().bulk_update(objs, fields, batch_size=batch_size)
        db = self._write_db()
        cache = row_cache_for(self.model)
        fields = list(fields)
        pks = [obj.pk for obj in objs]
        with transaction.atomic(using=db, savepoint=False):
            old = old_rows(models.QuerySet(self.model, using=db).filter(pk__in=pks))
            if cache is not None:
                fields = cache.before_bulk_update(objs, fields)
            # A plain queryset: Django's bulk_update calls update(), which here would
            # lock, read and invalidate the same rows a second time.
            plain: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=db)
            count = plain.bulk_update(objs, fields, batch_size=batch_size)
            if cache is not None:
                cache.after_bulk_update(objs, db)
            rows_changed(self.model, db, pks, old=old, new=objs)
        return count

    bulk_update.alters_data = True  # type: ignore[attr-defined]


def _conflict_target(model: type[Model], objs: Sequence[Model], kwargs: dict[str, Any]) -> Q | None:
    """Return a filter for the rows an upsert of ``objs`` may rewrite (None: no such row)."""
    meta = model._meta
    parts: list[Q] = []
    if kwargs.get("unique_fields"):
        unique = [meta.get_field(name) for name in kwargs["unique_fields"]]
        for obj in objs:
            values = {f.attname: getattr(obj, f.attname) for f in unique}  # type: ignore[union-attr]
            if all(v is not None for v in values.values()):
                parts.append(Q(**values))
    else:
        # MySQL's ON DUPLICATE KEY UPDATE fires on any unique key.
        for obj in objs:
            for f in meta.concrete_fields:
                if f.unique and getattr(obj, f.attname) is not None:
                    parts.append(Q(**{f.attname: getattr(obj, f.attname)}))
    if not parts:
        return None
    match = parts[0]
    for part in parts[1:]:
        match |= part
    return match


def _touched(model: type[Model], kwargs: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for dependency in dependencies_of(model):
        names.update(dependency.fields or [f.name for f in model._meta.concrete_fields])
    out = set()
    for name in names:
        field = model._meta.get_field(name)
        out.update({field.name, getattr(field, "attname", field.name)})
    return out & set(kwargs)


class CachedQuerySet(InvalidatingQuerySet[M]):
    """Serve ``get()`` by primary key or unique field, and ``get_many()``, from Redis."""

    def _pristine(self) -> bool:
        query = self.query
        own: Any = self
        return (
            not query.where
            and query.default_cols
            and not query.select_related
            and not query.deferred_loading[0]
            and not query.annotations
            and not query.extra
            and not query.select_for_update
            and not query.distinct
            and not query.combinator
            and query.low_mark == 0
            and query.high_mark is None
            and not own._prefetch_related_lookups
            and own._fields is None
            and own._iterable_class is ModelIterable
        )

    def get(self, *args: Any, **kwargs: Any) -> M:
        """Return one row; by pk or unique field from the cache, else from the database."""
        if not args and len(kwargs) == 1 and self._pristine():
            result = cached_get(self.model, _db(self), kwargs)
            if result is not _PASS:
                return result  # type: ignore[no-any-return]
        return super().get(*args, **kwargs)

    def get_many(self, pks: Iterable[Any]) -> dict[Any, M]:
        """Return ``{pk: instance}`` for the existing rows among ``pks``."""
        cache = row_cache_for(self.model)
        pks = list(pks)
        if (
            cache is None
            or not self._pristine()
            or not _default_db(self.model, _db(self))
            or has_pending_writes(_db(self) or router.db_for_write(self.model), cache.label)
        ):
            return self.in_bulk(pks)
        return cache.get_many(pks, _db(self) or router.db_for_read(self.model))  # type: ignore[return-value]


def _db(queryset: Any) -> str | None:
    return queryset._db  # type: ignore[no-any-return]


def _default_db(model: type[Model], db: str | None) -> bool:
    # Cached values come from the primary; an explicit other database bypasses them.
    return db is None or db == router.db_for_write(model)


def cached_get(model: type[Model], db: str | None, kwargs: dict[str, Any]) -> Any:
    """Serve a one-keyword ``get()`` from the row cache, or return ``_PASS``."""
    cache = row_cache_for(model)
    if cache is None or not _default_db(model, db):
        return _PASS
    ((name, value),) = kwargs.items()
    if value is None or hasattr(value, "resolve_expression"):
        return _PASS
    if has_pending_writes(db or router.db_for_write(model), cache.label):
        # This transaction wrote the model: the cache cannot show it its own writes.
        return _PASS
    name = name.removesuffix("__exact")
    read_db = db or router.db_for_read(model)
    pk = cache.pk_field
    if name in _PK_NAMES or name == pk.name or name == pk.attname:
        if isinstance(value, Model):
            return _PASS
        return cache.get(value, read_db)
    if name in cache.unique_fields:
        return cache.get_by_unique(name, value, read_db)
    return _PASS


_STOCK_GET_QUERYSET = BaseManager.get_queryset


@receiver(class_prepared)
def _register_inherited_manager(sender: type[Model], **kwargs: Any) -> None:
    """
    Django gives a model the managers of its abstract parents by copying them,
    without calling ``contribute_to_class``: register those here, so that a cached
    manager declared on an abstract base caches its concrete subclasses.
    """
    if sender._meta.abstract or sender._meta.proxy or has_own_row_cache(sender):
        return
    for manager in sender._meta.managers:
        if isinstance(manager, CacheAsideManager):
            register_row_cache(sender, manager.make_row_cache(sender))
            connect_model(sender)
            return


class InvalidatingManager(BaseManager.from_queryset(InvalidatingQuerySet)):  # type: ignore[misc]
    """Manager for models that are not cached but that cached results depend on."""


class CacheAsideManager(BaseManager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """
    Cache rows of the model in Redis; invalidate them after every committed write.

    ``ttl`` is in seconds (default ``DEFAULT_TTL``; None for no expiry).
    """

    row_cache_class: type[RowCache] = RowCache

    def __init__(self, ttl: int | None = UNSET, refresh_ahead: float | None = None) -> None:
        if refresh_ahead is not None:
            # Accepting and ignoring it would look like refresh-ahead works.
            raise ConfigurationError(
                "CacheAsideManager(refresh_ahead=...) is not available in this version of "
                "cachepatterns; leave it out (rows are then refreshed on their first miss)."
            )
        super().__init__()
        self.ttl = validate_ttl(ttl, f"{type(self).__name__}(ttl=...)")
        self._constructor_args = ((), self._options())

    def _options(self) -> dict[str, Any]:
        return {} if self.ttl is UNSET else {"ttl": self.ttl}

    def make_row_cache(self, model: type[Model]) -> RowCache:
        """Return the row cache this manager puts in front of ``model``."""
        return self.row_cache_class(model, ttl=self.ttl)

    def contribute_to_class(self, model: type[Model], name: str) -> None:
        super().contribute_to_class(model, name)
        if not model._meta.abstract:
            register_row_cache(model, self.make_row_cache(model))
            connect_model(model)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """Return one row; by pk or unique field from the cache (no queryset is built)."""
        if not args and len(kwargs) == 1 and type(self).get_queryset is _STOCK_GET_QUERYSET:
            result = cached_get(self.model, self._db, kwargs)
            if result is not _PASS:
                return result
        return self.get_queryset().get(*args, **kwargs)


class WriteThroughManager(CacheAsideManager):
    """
    Like :class:`CacheAsideManager`, but a committed ``save()`` puts the fresh row
    into the cache. Concurrent writers are ordered by ``version_field``, an integer
    field every write path increments.
    """

    def __init__(self, ttl: int | None = UNSET, version_field: str = "version") -> None:
        super().__init__(ttl=ttl)
        self.version_field = version_field
        self._constructor_args = ((), {**self._options(), "version_field": version_field})

    def make_row_cache(self, model: type[Model]) -> RowCache:
        from cachepatterns_app.patterns.write_through import WriteThroughRowCache

        return WriteThroughRowCache(model, ttl=self.ttl, version_field=self.version_field)
