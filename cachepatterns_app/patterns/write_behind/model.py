"""
``WriteBehindModel``, the abstract base of models saved write-behind, and the writes
that go to the database directly around the queue.

``obj.save()`` queues the row's new state in Redis and returns; ``obj.delete()``
queues the delete; ``save(sync=True)`` / ``delete(sync=True)`` write the database
now. Every direct write carries a sequence drawn after every write already queued,
stored in the row's ``wb_seq`` column (or, for a delete, in a tombstone), so that the
flush skips the older queued writes of that row instead of overwriting it.

When Redis is unreachable a direct write cannot draw a sequence. It is written
anyway (``ON_CACHE_FAILURE = "sync"``) and recorded as a *fence* in the database;
the next flush of the model, which cannot run before Redis is back, first draws a
sequence for each fenced row and stamps it on the row (or its tombstone), so the
writes queued before the outage are skipped and the direct write stands.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import DatabaseError, models, router
from django.db.models import Model

from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError

__all__ = [
    "WriteBehindModel",
    "apply_fences",
    "fence_later",
    "prune_tombstones",
    "record_tombstones",
    "sync_write",
]

logger = logging.getLogger(__name__)


_lookup: tuple[type, Any] | None = None


def cache_of(model: type[Model]) -> Any:
    """Return the write-behind row cache of ``model`` (None if it has no WriteBehindManager)."""
    global _lookup
    if _lookup is None:
        # Imported on first use, not with the module: models import this module, and
        # the row cache imports what imports models. Kept: this runs on every save.
        from cachepatterns_app.patterns.write_behind.rows import WriteBehindRowCache
        from cachepatterns_app.registry import row_cache_for

        _lookup = (WriteBehindRowCache, row_cache_for)
    kind, row_cache_for = _lookup
    cache = row_cache_for(model)
    return cache if isinstance(cache, kind) else None


class WriteBehindModel(models.Model):
    """
    Abstract base of models saved write-behind (with ``objects = WriteBehindManager()``).

    ``wb_seq`` is the sequence of the last write the database applied to the row; the
    flush applies a queued write only if its sequence is higher.
    """

    wb_seq = models.BigIntegerField(default=0, editable=False)

    class Meta:
        abstract = True

    def save(self, *args: Any, sync: bool = False, **kwargs: Any) -> None:
        """
        Queue the row's new state in Redis (return once it is durably queued), or, with
        ``sync=True``, write the database now. ``update_fields`` queues those fields only.
        """
        cache = cache_of(type(self))
        if cache is None:
            raise ConfigurationError(
                f"{type(self).__name__} derives from WriteBehindModel but its default manager is "
                "not a WriteBehindManager; declare `objects = WriteBehindManager()`."
            )
        if sync or kwargs.get("force_insert") or kwargs.get("force_update") or args:
            sync_write(self, "save", cache.db_for(self, kwargs.pop("using", None)), fenced=True, **kwargs)
            return
        if self._state.adding and self.pk is None and cache.sync_creates:
            sync_write(self, "save", cache.db_for(self, kwargs.pop("using", None)), fenced=True, **kwargs)
            return
        cache.queue_save(self, using=kwargs.get("using"), update_fields=kwargs.get("update_fields"))

    save.alters_data = True  # type: ignore[attr-defined]

    def delete(self, using: str | None = None, keep_parents: bool = False, sync: bool = False) -> Any:
        """Queue the delete (or, with ``sync=True``, delete now, cascades included)."""
        cache = cache_of(type(self))
        if sync or cache is None or keep_parents:
            return super().delete(using=using, keep_parents=keep_parents)
        seq = cache.queue_delete(self, using=using)
        return (1, {self._meta.label: 1}) if seq else (0, {})

    delete.alters_data = True  # type: ignore[attr-defined]


def sync_write(instance: Model, op: str, db: str, *, fenced: bool, **kwargs: Any) -> None:
    """
    Write ``instance`` (``op`` "save" or "delete") to the database now. ``fenced``: Redis
    answers, so draw the sequence first; otherwise record a fence for the next flush.
    """
    cache = cache_of(type(instance))
    seq = None
    if fenced:
        try:
            seq = cache.next_seq(db)
        except CacheUnavailable:
            seq = None
    if op == "delete":
        models.Model.delete(instance, using=db)
        return
    if seq is not None:
        instance.wb_seq = seq  # type: ignore[attr-defined]
    models.Model.save(instance, using=db, **kwargs)
    if seq is None:
        fence_later(cache, db, [instance.pk])


def record_tombstones(cache: Any, using: str, pks: Iterable[Any], seq: int) -> None:
    """Remember, in the write's transaction, that rows ``pks`` were deleted at ``seq``."""
    from cachepatterns_app.models import WriteBehindTombstone

    rows = [WriteBehindTombstone(label=cache.label, pk_text=_pk_text(cache, pk), seq=seq) for pk in pks]
    if not rows:
        return
    query: Any = models.QuerySet(WriteBehindTombstone, using=using)
    from django.db import connections

    if connections[using].features.supports_update_conflicts_with_target:
        query.bulk_create(
            rows, update_conflicts=True, unique_fields=["label", "pk_text"], update_fields=["seq"]
        )
    else:
        query.bulk_create(rows, update_conflicts=True, update_fields=["seq"])


def prune_tombstones(cache: Any, using: str) -> int:
    """
    Delete the tombstones of ``cache``'s model in database ``using`` that no queued
    write can still need; return how many. A tombstone stops a write queued *before*
    its delete from bringing the row back; once every such write has been flushed (the
    lowest sequence still queued is above the tombstone's), it guards nothing.
    """
    from django.db import connections, transaction

    from cachepatterns_app.models import WriteBehindTombstone

    floor = cache.queue(using).low_water()
    if floor is None:
        return 0
    connection = connections[using]
    meta = WriteBehindTombstone._meta
    quote = connection.ops.quote_name
    field: Any = meta.get_field
    # One statement, not QuerySet.delete(): with any delete signal receiver connected
    # that collects the ids first and deletes by id, and a tombstone updated in place
    # meanwhile by a newer delete of its row (same id, higher seq) would go with them.
    # A single DELETE has the database check seq against the row's latest version.
    sql = (
        f"DELETE FROM {quote(meta.db_table)} WHERE {quote(field('label').column)} = %s "  # noqa: S608
        f"AND {quote(field('seq').column)} < %s"
    )
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(sql, [cache.label, floor])
        deleted = max(0, cursor.rowcount or 0)
    if deleted:
        logger.info(
            "Pruned %d write-behind tombstone(s) of %s below sequence %d", deleted, cache.label, floor
        )
    return deleted


def _pk_text(cache: Any, pk: Any) -> str:
    return str(cache.pk_field.value_to_string(_Holder(cache.pk_attname, pk)))


class _Holder:
    def __init__(self, attname: str, value: Any) -> None:
        setattr(self, attname, value)


def fence_later(cache: Any, using: str, pks: Iterable[Any]) -> None:
    """Record that rows ``pks`` were written directly while Redis was unreachable."""
    from cachepatterns_app.models import WriteBehindFence

    rows = [WriteBehindFence(label=cache.label, db_alias=using, pk_text=_pk_text(cache, pk)) for pk in pks]
    query: Any = models.QuerySet(WriteBehindFence, using=router.db_for_write(WriteBehindFence))
    try:
        query.bulk_create(rows, ignore_conflicts=True)
    except DatabaseError as e:
        logger.error("Could not record write-behind fences for %s: %s", cache.label, e)


def apply_fences(cache: Any, using: str) -> int:
    """Stamp a fresh sequence on every row fenced while Redis was down; return how many."""
    from django.db import transaction

    from cachepatterns_app.models import WriteBehindFence
    from cachepatterns_app.patterns.write_behind.rows import flushing

    fences: list[Any] = list(
        models.QuerySet(WriteBehindFence, using=router.db_for_write(WriteBehindFence)).filter(
            label=cache.label, db_alias=using
        )[:1000]
    )
    if not fences:
        return 0
    seq = cache.next_seq(using)
    pks = [cache.pk_field.to_python(f.pk_text) for f in fences]
    with transaction.atomic(using=using), flushing():
        present = set(
            models.QuerySet(cache.model, using=using).filter(pk__in=pks).values_list("pk", flat=True)
        )
        models.QuerySet(cache.model, using=using).filter(pk__in=list(present)).update(wb_seq=seq)
        record_tombstones(cache, using, [pk for pk in pks if pk not in present], seq)
    from cachepatterns_app.invalidation import send

    send(dict(cache.fence(pks, using, seq)))
    models.QuerySet(WriteBehindFence, using=router.db_for_write(WriteBehindFence)).filter(
        pk__in=[f.pk for f in fences]
    ).delete()
    logger.warning(
        "Applied %d write-behind fence(s) of %s recorded while Redis was down", len(fences), cache.label
    )
    return len(fences)
