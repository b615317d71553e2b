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

from cachepatterns_app.batch import has_pending_writes
from cachepatterns_app.changes import UPDATE, RowChange
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.leases import UNSET
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.registry import (
    forget_descendants,
    has_own_row_cache,
    register_row_cache,
    row_cache_for,
)
from cachepatterns_app.rows import dependency_fields, in_lock_order, old_rows, resolve_pks
from cachepatterns_app.signals import connect_model, is_link_model, link_models, record_links
from cachepatterns_app.validation import validate_ttl
from cachepatterns_app.writes import fresh_rows, record, watched

__all__ = [
    "CacheAsideManager",
    "CachedQuerySet",
    "InvalidatingManager",
    "InvalidatingQuerySet",
    "WriteBehindManager",
    "WriteBehindQuerySet",
    "WriteThroughManager",
]

M = TypeVar("M", bound=Model)

_PASS: Any = object()
_PK_NAMES = ("pk", "pk__exact")


def _watched(model: type[Model]) -> bool:
    return watched(model) or is_link_model(model)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class InvalidatingQuerySet(models.QuerySet[M]):
    """A queryset whose bulk writes invalidate what depends on the rows they touch."""

    #: Bulk writes of a many-to-many link model through this queryset report their links.
    reports_links = True

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
        link = is_link_model(self.model)
        with transaction.atomic(using=db, savepoint=False):
            # Lock the rows first: the set we invalidate is then exactly the set we
            # update, and their "before" values cannot change under us.
            if link:
                old = list(_locked(self))
                pks = [row.pk for row in old]
            else:
                old = old_rows(self)
                pks = [row.pk for row in old] if old else list(_locked(self).values_list("pk", flat=True))
            count = 0
            base: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=db)
            for chunk in _chunks(pks, max(1, min(batch, 2000))):
                count += base.filter(pk__in=chunk).update(**kwargs)
            if link:
                record_links(self.model, db, [*old, *base.filter(pk__in=pks)])
                return count
            new = list(old_rows(base.filter(pk__in=pks))) if old and _touched(self.model, kwargs) else old
            record(RowChange(self.model, db, pks, UPDATE, old=old, new=new))
        return count

    update.alters_data = True  # type: ignore[attr-defined]

    def create(self, **kwargs: Any) -> M:
        """Create a row; Django sends no signal for an auto-created link model's rows: report it."""
        obj = super().create(**kwargs)
        if is_link_model(self.model) and self.model._meta.auto_created:
            record_links(self.model, self._write_db(), [obj])
        return obj

    create.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the matching rows; a link model's rows report their links in one go."""
        if not is_link_model(self.model):
            return super().delete()
        db = self._write_db()
        with transaction.atomic(using=db, savepoint=False):
            links = list(_locked(self))
            result = super().delete()
            record_links(self.model, db, links)
        return result

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        """Insert ``objs``, then invalidate what depends on them after commit."""
        if not _watched(self.model):
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        db = self._write_db()
        if is_link_model(self.model):
            with transaction.atomic(using=db, savepoint=False):
                created = super().bulk_create(objs, *args, **kwargs)
                record_links(self.model, db, created)
            return created
        match = _conflict_target(self.model, objs, kwargs) if kwargs.get("update_conflicts") else None
        if match is None:
            # One transaction: what record() writes to the database (a write-behind fence
            # while Redis is unreachable) commits with the rows, never just after them.
            with transaction.atomic(using=db, savepoint=False):
                created = super().bulk_create(objs, *args, **kwargs)
                pks = [obj.pk for obj in created if obj.pk is not None]
                record(RowChange(self.model, db, pks, UPDATE, new=fresh_rows(self.model, db, created, None)))
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
            rows = list(base)
            pks = list(dict.fromkeys([row.pk for row in rows] + [o.pk for o in created if o.pk is not None]))
            record(RowChange(self.model, db, pks, UPDATE, old=old, new=[*rows, *created]))
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
        with transaction.atomic(using=db, savepoint=False):
            # The objects' primary keys are the caller's: read the database's own
            # spellings (a case-insensitive collation may match others) with the rows.
            pks = resolve_pks(self.model, db, [obj.pk for obj in objs])
            old = old_rows(models.QuerySet(self.model, using=db).filter(pk__in=pks))
            if cache is not None:
                fields = cache.before_bulk_update(objs, fields)
            # A plain queryset: Django's bulk_update calls update(), which here would
            # lock, read and invalidate the same rows a second time.
            plain: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=db)
            count = plain.bulk_update(objs, fields, batch_size=batch_size)
            if cache is not None:
                cache.after_bulk_update(objs, db)
            new = fresh_rows(self.model, db, objs, dependency_fields(self.model)) if old else []
            record(RowChange(self.model, db, pks, UPDATE, old=old, new=new))
        return count

    bulk_update.alters_data = True  # type: ignore[attr-defined]


def _locked(queryset: models.QuerySet[Any, Any]) -> models.QuerySet[Any, Any]:
    connection = connections[queryset.db]
    if connection.in_atomic_block and connection.features.has_select_for_update:
        return in_lock_order(queryset).select_for_update()
    return queryset


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
    names = dependency_fields(model)
    if names is None:
        names = {f.attname for f in model._meta.concrete_fields}
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
        cache_db = router.db_for_write(self.model)
        db = _db(self)
        if (
            cache is None
            or not self._pristine()
            or (db is not None and db != cache_db)
            or has_pending_writes(cache_db, cache.label)
        ):
            return self.in_bulk(pks)
        return cache.get_many(pks, db or router.db_for_read(self.model), cache_db)  # type: ignore[return-value]


def _db(queryset: Any) -> str | None:
    return queryset._db  # type: ignore[no-any-return]


def cached_get(model: type[Model], db: str | None, kwargs: dict[str, Any]) -> Any:
    """Serve a one-keyword ``get()`` from the row cache, or return ``_PASS``."""
    cache = row_cache_for(model)
    if cache is None:
        return _PASS
    cache_db = router.db_for_write(model)
    if db is not None and db != cache_db:
        # Cached values come from the primary; an explicit other database bypasses them.
        return _PASS
    ((name, value),) = kwargs.items()
    if value is None or hasattr(value, "resolve_expression"):
        return _PASS
    if has_pending_writes(cache_db, cache.label):
        # This transaction wrote the model: the cache cannot show it its own writes.
        return _PASS
    name = name.removesuffix("__exact")
    read_db = db or router.db_for_read(model)
    pk = cache.pk_field
    if name in _PK_NAMES or name == pk.name or name == pk.attname:
        if isinstance(value, Model):
            return _PASS
        return cache.get(value, read_db, cache_db)
    if name in cache.unique_fields:
        return cache.get_by_unique(name, value, read_db, cache_db)
    return _PASS


_STOCK_GET_QUERYSET = BaseManager.get_queryset


@receiver(class_prepared)
def _register_inherited_manager(sender: type[Model], **kwargs: Any) -> None:
    """
    Connect the signal handlers of a model with a cached manager once Django has
    finished building it. Django gives a model the managers of its abstract parents
    by copying them, without calling ``contribute_to_class``: register those here
    too, so that a cached manager declared on an abstract base caches its concrete
    subclasses.
    """
    forget_descendants()  # a new class may be a descendant of a cached one
    if sender._meta.abstract:
        return
    if has_own_row_cache(sender):
        # Connected here, not in contribute_to_class: the class's parents are set up
        # after its managers, and asking for them earlier would cache an empty list.
        connect_model(sender)
        return
    if sender._meta.proxy:
        return
    for manager in sender._meta.managers:
        if isinstance(manager, CacheAsideManager):
            register_row_cache(sender, manager.make_row_cache(sender))
            connect_model(sender)
            _claim_base_manager(sender, manager)
            return


def _claim_base_manager(model: type[Model], manager: BaseManager[Any]) -> None:
    """
    Make ``manager`` the model's base manager unless its ``Meta`` names one. Django's
    related managers write through the base manager (``author.posts.add(post)`` is a
    ``_base_manager.filter(pk__in=…).update(author=…)``), which would otherwise be a
    plain manager that reports nothing. The app's managers filter no rows, as a base
    manager must not (a subclass that overrides ``get_queryset()`` is left alone, and
    check W006 flags it), and a ``get()`` they serve from the cache returns what the
    database would.
    """
    meta = model._meta
    if meta.abstract or meta.base_manager_name or type(manager).get_queryset is not _STOCK_GET_QUERYSET:
        return
    meta.base_manager_name = manager.name
    meta.__dict__.pop("base_manager", None)


def adopt_link_models() -> None:
    """
    Give the auto-created link model of every many-to-many relation a cache depends
    on the app's manager, so that ``Post.tags.through.objects.bulk_create(...)`` —
    which sends no signal — reports the links it writes. Django creates these models
    and their plain managers itself; nothing else relies on those managers.
    """
    for through in link_models():
        meta = through._meta
        if not meta.auto_created or isinstance(through._default_manager.get_queryset(), InvalidatingQuerySet):
            continue
        meta.local_managers = [m for m in meta.local_managers if m.name != "objects"]
        manager = InvalidatingManager()
        manager.auto_created = True
        manager.contribute_to_class(through, "objects")
        meta._expire_cache()  # type: ignore[attr-defined]


class InvalidatingManager(BaseManager.from_queryset(InvalidatingQuerySet)):  # type: ignore[misc]
    """Manager for models that are not cached but that cached results depend on."""

    def contribute_to_class(self, model: type[Model], name: str) -> None:
        super().contribute_to_class(model, name)
        _claim_base_manager(model, self)


class CacheAsideManager(BaseManager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """
    Cache rows of the model in Redis; invalidate them after every committed write.

    ``ttl`` is in seconds (default ``DEFAULT_TTL``; None for no expiry). With
    ``refresh_ahead=0.2``, a hit with less than a fifth of the TTL left schedules a
    background reload of the row (Celery task ``cachepatterns.refresh_row``).
    """

    row_cache_class: type[RowCache] = RowCache

    def __init__(self, ttl: int | None = UNSET, refresh_ahead: float | None = None) -> None:
        super().__init__()
        where = f"{type(self).__name__}(refresh_ahead=...)"
        self.ttl = validate_ttl(ttl, f"{type(self).__name__}(ttl=...)")
        if refresh_ahead is not None:
            if isinstance(refresh_ahead, bool) or not isinstance(refresh_ahead, int | float):
                raise ConfigurationError(f"{where}: {refresh_ahead!r} is not a fraction; use e.g. 0.2.")
            if not 0 < refresh_ahead < 1:
                raise ConfigurationError(
                    f"{where}: {refresh_ahead!r}; use a fraction between 0 and 1 (0.2 reloads a hot "
                    "row in the last fifth of its TTL), or None for no refresh-ahead."
                )
            if ttl is None:
                raise ConfigurationError(f"{where}: rows with ttl=None never expire; give ttl= in seconds.")
        self.refresh_ahead = refresh_ahead
        self._constructor_args = ((), self._options())

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {} if self.ttl is UNSET else {"ttl": self.ttl}
        if self.refresh_ahead is not None:
            options["refresh_ahead"] = self.refresh_ahead
        return options

    def make_row_cache(self, model: type[Model]) -> RowCache:
        """Return the row cache this manager puts in front of ``model``."""
        if self.refresh_ahead is not None:
            from cachepatterns_app.patterns.refresh_ahead.rows import RefreshAheadRowCache

            return RefreshAheadRowCache(model, ttl=self.ttl, factor=float(self.refresh_ahead))
        return self.row_cache_class(model, ttl=self.ttl)

    def contribute_to_class(self, model: type[Model], name: str) -> None:
        super().contribute_to_class(model, name)
        if not model._meta.abstract:
            register_row_cache(model, self.make_row_cache(model))
            _claim_base_manager(model, self)

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


class WriteBehindQuerySet(CachedQuerySet[M]):
    """The queryset of a write-behind model: reads see queued writes; bulk writes are ordered after them."""

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        """Insert ``objs`` now, ordered after every write already queued for their rows."""
        from cachepatterns_app.patterns.write_behind.rows import _UNAVAILABLE, SEQ_FIELD, _take_seq

        objs = list(objs)
        cache = row_cache_for(self.model)
        if cache is not None and objs:
            seq = _take_seq(cache, self._write_db())  # type: ignore[arg-type]
            if seq != _UNAVAILABLE:
                for obj in objs:
                    setattr(obj, SEQ_FIELD, seq)
        return super().bulk_create(objs, *args, **kwargs)

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def incr(self, pk: Any, field: str, amount: int = 1) -> int:
        """Add ``amount`` to integer column ``field`` of row ``pk`` in Redis (queued); return it."""
        return _write_behind_cache(self.model).incr(pk, field, amount, using=_db(self))  # type: ignore[no-any-return]

    def flushed(self) -> WriteBehindQuerySet[M]:
        """Flush this model's queued writes to the database now, then return this queryset."""
        from cachepatterns_app.patterns.write_behind.operations import flush

        flush(self.model)
        return self._chain()  # type: ignore[attr-defined,no-any-return]


def _write_behind_cache(model: type[Model]) -> Any:
    from cachepatterns_app.patterns.write_behind.rows import WriteBehindRowCache

    cache = row_cache_for(model)
    if not isinstance(cache, WriteBehindRowCache):
        raise ConfigurationError(f"{model.__name__} has no WriteBehindManager.")
    return cache


class WriteBehindManager(CacheAsideManager):
    """
    Queue saves and deletes of ``WriteBehindModel`` rows in Redis and flush them to the
    database later (Celery). ``get(pk=…)`` sees the latest queued write.

    ``sync_creates=True`` lets a model whose primary key the database assigns
    (auto-increment) create rows synchronously; its later saves are queued.
    """

    _queryset_class = WriteBehindQuerySet

    def __init__(self, ttl: int | None = UNSET, sync_creates: bool = False) -> None:
        super().__init__(ttl=ttl)
        self.sync_creates = sync_creates
        self._constructor_args = ((), {**self._options(), "sync_creates": sync_creates})

    def make_row_cache(self, model: type[Model]) -> RowCache:
        from cachepatterns_app.patterns.write_behind.rows import WriteBehindRowCache

        return WriteBehindRowCache(model, ttl=self.ttl, sync_creates=self.sync_creates)

    def incr(self, pk: Any, field: str, amount: int = 1) -> int:
        """Add ``amount`` to integer column ``field`` of row ``pk`` in Redis (queued); return it."""
        return self.get_queryset().incr(pk, field, amount)  # type: ignore[no-any-return]

    def flushed(self) -> Any:
        """Flush this model's queued writes now; return a queryset that sees them (filters, counts)."""
        return self.get_queryset().flushed()
