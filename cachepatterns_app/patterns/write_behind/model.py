"""
``WriteBehindModel``, the abstract base of models saved write-behind, and the writes
that go to the database directly around the queue.

``obj.save()`` queues the row's new state in Redis and returns; ``obj.delete()``
queues the delete; ``save(sync=True)`` / ``delete(sync=True)`` write the database
now. Every direct write carries a sequence drawn after every write already queued,
stored in the row's ``wb_seq`` column (or, for a delete, in a tombstone), so that the
flush skips the older queued writes of that row instead of overwriting it.

When Redis is unreachable a direct write cannot draw a sequence. It is written
anyway (``ON_CACHE_FAILURE = "sync"``) and recorded as a *fence* in the database,
with its time; the next flush of the model, which cannot run before Redis is back,
first stamps on the row (or its tombstone) the sequence of the last write queued
before that time, so the writes queued before the direct write are skipped, it
stands, and those queued after it (Redis back) still land.

An ``incr()`` is different: it adds to whatever the row holds, including increments
Redis has queued and the column lacks. Written to the column directly it would be
overwritten by the flush of those (which writes the row's state), and fenced it would
drop them. So, with Redis unreachable, it is *recorded* in the database
(``WriteBehindIncrement``), and the next flush, after applying the fences, adds each
recorded increment to the row in Redis, which queues it like any increment. A mark in
Redis, set by the same script, makes that happen once however often it is replayed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import DatabaseError, connections, models, router, transaction
from django.db.models import F, Field, Max, Model, Sum, Value
from django.db.models.functions import Greatest

from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError, WriteBehindError

__all__ = [
    "WriteBehindModel",
    "apply_fences",
    "apply_increments",
    "apply_repairs",
    "fence_later",
    "prune_tombstones",
    "record_increment",
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
        return
    # The fence in the write's own transaction (where both share a database): a flush
    # that sees the write sees its fence, and applies it before any queued write.
    with transaction.atomic(using=db):
        models.Model.save(instance, using=db, **kwargs)
        fence_later(cache, db, [instance.pk])


def record_tombstones(cache: Any, using: str, pks: Iterable[Any], seq: int) -> None:
    """Remember, in the write's transaction, that rows ``pks`` were deleted at ``seq``."""
    from cachepatterns_app.models import WriteBehindTombstone

    rows = [WriteBehindTombstone(label=cache.label, pk_text=_pk_text(cache, pk), seq=seq) for pk in pks]
    if not rows:
        return
    query: Any = models.QuerySet(WriteBehindTombstone, using=using)
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
    field = cache.pk_field
    cls = type(field)
    plain = _plain_text.get(cls)
    if plain is None:
        # Field.value_to_string is str(getattr(obj, attname)): where a class keeps it
        # (Django's key fields do), the text is str(pk) without the holder object.
        plain = _plain_text[cls] = (
            cls.value_to_string is Field.value_to_string and cls.value_from_object is Field.value_from_object
        )
    if plain:
        return str(pk)
    return str(field.value_to_string(_Holder(cache.pk_attname, pk)))


_plain_text: dict[type, bool] = {}


class _Holder:
    def __init__(self, attname: str, value: Any) -> None:
        setattr(self, attname, value)


def fence_later(cache: Any, using: str, pks: Iterable[Any]) -> None:
    """Record that rows ``pks`` were written directly while Redis was unreachable."""
    from cachepatterns_app.models import WriteBehindFence

    rows = [WriteBehindFence(label=cache.label, db_alias=using, pk_text=_pk_text(cache, pk)) for pk in pks]
    where = router.db_for_write(WriteBehindFence)
    query: Any = models.QuerySet(WriteBehindFence, using=where)
    try:
        # A savepoint: a fence that cannot be recorded must not undo the direct write of
        # the transaction it is recorded in.
        with transaction.atomic(using=where):
            # A row written directly again keeps one fence, with the time of its latest
            # write: the writes queued before that time lose to it, those queued after win.
            if connections[where].features.supports_update_conflicts_with_target:
                query.bulk_create(
                    rows,
                    update_conflicts=True,
                    unique_fields=["label", "db_alias", "pk_text"],
                    update_fields=["created"],
                )
            else:
                query.bulk_create(rows, update_conflicts=True, update_fields=["created"])
    except DatabaseError as e:
        logger.error("Could not record write-behind fences for %s: %s", cache.label, e)


#: How long the mark of a replayed increment lives. Not deleted with its record: a flush
#: whose repair lock lapsed may still hold the record it read, and the mark is what makes
#: its replay a no-op. A day is far longer than any flush.
INCREMENT_MARK_MS = 24 * 3600 * 1000
#: How long the flush applying the outage's writes holds the model's repair lock before
#: it lapses (a flush that died); extended after every batch, by the holder only.
REPAIR_LOCK_MS = 60_000
#: Records taken per round trip to the database.
REPAIR_BATCH = 1000


def repairs_pending(cache: Any, using: str) -> tuple[bool, bool]:
    """
    Return whether writes made around Redis during an outage wait for ``cache``'s model
    in ``using``: (fences, increments). One query where both tables share a database
    (every flush asks, and nearly always the answer is no).
    """
    from cachepatterns_app.models import WriteBehindFence, WriteBehindIncrement

    where = router.db_for_write(WriteBehindFence)
    connection = connections[where]
    if router.db_for_write(WriteBehindIncrement) != where or connection.vendor not in (
        "mysql",
        "postgresql",
        "sqlite",
    ):
        found: list[Any] = [
            models.QuerySet(m, using=router.db_for_write(m)).filter(label=cache.label, db_alias=using)
            for m in (WriteBehindFence, WriteBehindIncrement)
        ]
        return found[0].exists(), found[1].exists()
    quote = connection.ops.quote_name
    tests = []
    for model in (WriteBehindFence, WriteBehindIncrement):
        meta: Any = model._meta
        label, alias = (quote(meta.get_field(name).column) for name in ("label", "db_alias"))
        # Only quoted identifiers are interpolated; the values are parameters.
        table = quote(meta.db_table)
        tests.append(f"EXISTS(SELECT 1 FROM {table} WHERE {label} = %s AND {alias} = %s)")  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(tests)}", [cache.label, using] * 2)
        fences, increments = cursor.fetchone()
    return bool(fences), bool(increments)


def fences_pending(cache: Any, using: str, texts: Sequence[str]) -> bool:
    """
    Whether a direct write made while Redis was unreachable waits to be fenced for any of
    the rows ``texts`` (their key texts): first one indexed probe for the model, then, only
    if it has any fence, the rows themselves (another row's fence does not hold them up).

    Plain reads, asked with the batch's rows locked: in the flush's own transaction the
    first read takes its snapshot (REPEATABLE READ) after those locks, and a flush in the
    caller's transaction runs only at READ COMMITTED (``flush._flush_in_callers_transaction``),
    so a direct write committed before is seen with its fence, and no lock of a fence is
    waited for (a review found a
    locking probe waiting for another row's uncommitted fence, in a deadlock with the
    direct write that recorded it).
    """
    from cachepatterns_app.models import WriteBehindFence

    where = router.db_for_write(WriteBehindFence)
    connection = connections[where]
    meta: Any = WriteBehindFence._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    label, alias, text = (quote(meta.get_field(name).column) for name in ("label", "db_alias", "pk_text"))
    # Only quoted identifiers and placeholders are interpolated; the values are parameters.
    sql = f"SELECT 1 FROM {table} WHERE {label} = %s AND {alias} = %s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} LIMIT 1", [cache.label, using])
        if cursor.fetchone() is None:
            return False
        for start in range(0, len(texts), REPAIR_BATCH):
            chunk = list(texts[start : start + REPAIR_BATCH])
            cursor.execute(
                f"{sql} AND {text} IN ({', '.join(['%s'] * len(chunk))}) LIMIT 1",
                [cache.label, using, *chunk],
            )
            if cursor.fetchone() is not None:
                return True
    return False


def record_increment(cache: Any, db: str, pk: Any, field: Any, amount: int) -> int:
    """
    Record ``incr(pk, field, amount)`` for the next flush (Redis is unreachable); return
    the count as the database knows it: the column plus the increments recorded so far.
    Raises ``WriteBehindError`` (recording nothing) if the database has no such row.
    """
    from cachepatterns_app.models import WriteBehindIncrement

    found = models.QuerySet(cache.model, using=db).filter(pk=pk).values_list(field.attname).first()
    if found is None or found[0] is None:
        why = "the database has no such row" if found is None else "the column is NULL"
        raise WriteBehindError(
            f"{cache.label}.incr({pk!r}, {field.attname!r}) was not accepted: Redis is unavailable "
            f"and {why} (a row created write-behind may be only in Redis). Nothing was recorded."
        )
    where = router.db_for_write(WriteBehindIncrement)
    text = _pk_text(cache, pk)
    recorded: Any = models.QuerySet(WriteBehindIncrement, using=where)
    with transaction.atomic(using=where):
        recorded.create(label=cache.label, db_alias=db, pk_text=text, field=field.attname, amount=amount)
        pending = recorded.filter(
            label=cache.label, db_alias=db, pk_text=text, field=field.attname
        ).aggregate(total=Sum("amount"))["total"]
    return int(found[0]) + int(pending or 0)


def apply_repairs(cache: Any, using: str, *, wait: bool = True) -> bool:
    """
    Apply what was written around Redis during an outage for ``cache``'s model in
    ``using``, before any queued write of it is flushed: first every fence (a direct write
    that the writes queued before it must not overwrite), then the increments recorded
    before this started (added on top of what the fences left; a later one may come after
    a fence recorded meanwhile, and waits for the next flush, which applies that fence
    first). One flush at a time: applying a fence twice would draw a second, newer
    sequence and make the increments replayed in between stale.

    Return False, having done nothing, if another flush holds the repairs and ``wait`` is
    false (the beat's tasks: they skip the model rather than hold a worker); with ``wait``,
    wait for it.
    """
    fences, increments = repairs_pending(cache, using)
    if not (fences or increments):
        return True
    from cachepatterns_app.models import WriteBehindIncrement
    from cachepatterns_app.store import new_token

    store = cache._store()
    lock, token = cache.wb_keys(using).repairs, new_token()
    waited = time.monotonic()
    while not store.execute("SET", lock, token, "NX", "PX", REPAIR_LOCK_MS):
        # Another flush is applying them; nothing of the model is flushed before.
        if not wait:
            logger.info(
                "Write-behind flush of %s skipped: another flush applies its outage repairs", cache.label
            )
            return False
        if time.monotonic() - waited > 2 * REPAIR_LOCK_MS / 1000:
            raise WriteBehindError(
                f"Write-behind flush of {cache.label}: another flush has held the outage repairs for "
                f"{2 * REPAIR_LOCK_MS // 1000} s; nothing was flushed, the next flush tries again."
            )
        time.sleep(0.01)

    def extend() -> None:
        if not store.script("lock_extend", (lock,), (token, REPAIR_LOCK_MS)):
            raise WriteBehindError(
                f"Write-behind flush of {cache.label}: its hold on the outage repairs lapsed; it "
                "stops, and the flush that holds them now goes on."
            )

    try:
        recorded: Any = models.QuerySet(WriteBehindIncrement, using=router.db_for_write(WriteBehindIncrement))
        last = (
            recorded.filter(label=cache.label, db_alias=using).aggregate(last=Max("id"))["last"]
            if increments
            else None
        )
        while apply_fences(cache, using) == REPAIR_BATCH:
            extend()
        if last is not None:
            extend()
            while apply_increments(cache, using, up_to=last) == REPAIR_BATCH:
                extend()
    finally:
        with contextlib.suppress(CacheUnavailable):
            store.script("release", (lock,), (token,))
    return True


def apply_increments(cache: Any, using: str, up_to: int | None = None) -> int:
    """
    Add up to ``REPAIR_BATCH`` increments recorded while Redis was down to their rows in
    Redis (queued like any increment), each once; return how many records were taken.
    Called by :func:`apply_repairs`, after the fences: a fence drops what Redis queued
    before it, and an increment added before that would go with it.
    """
    from cachepatterns_app.models import WriteBehindIncrement

    where = router.db_for_write(WriteBehindIncrement)
    recorded: Any = models.QuerySet(WriteBehindIncrement, using=where)
    found = recorded.filter(label=cache.label, db_alias=using)
    if up_to is not None:
        found = found.filter(id__lte=up_to)
    rows = list(found.order_by("id")[:REPAIR_BATCH])
    keys = cache.wb_keys(using)
    added, done, kept = 0, [], 0
    for row in rows:
        mark = keys.increment(row.token)
        try:
            pk = cache.canonical_pk(cache.pk_field.to_python(row.pk_text))
            outcome = cache.replay_increment(using, pk, row.field, row.amount, (mark, INCREMENT_MARK_MS))
        except CacheUnavailable:
            raise  # Redis is down again: the flush stops; the records wait
        except Exception as e:  # noqa: BLE001 - one record must not stop the model's flush
            kept += 1
            logger.warning(
                "Write-behind increment of %s pk_text=%r %s by %d, recorded while Redis was down, "
                "is not added yet (%s: %s); the next flush tries again",
                cache.label,
                row.pk_text,
                row.field,
                row.amount,
                type(e).__name__,
                e,
            )
            continue
        if outcome == "wait":
            break  # MAX_PENDING: the queue is full; the next flush goes on
        if outcome == "dropped":
            logger.error(
                "Write-behind increment of %s pk=%r %s by %d, recorded while Redis was down, "
                "was dropped: the row is deleted or the column holds no integer",
                cache.label,
                pk,
                row.field,
                row.amount,
            )
        added += outcome == "added"
        done.append(row.id)
    if done:
        recorded.filter(id__in=done).delete()
        logger.warning(
            "Added %d write-behind increment(s) of %s recorded while Redis was down", added, cache.label
        )
    # Only a full batch that was all taken says more may wait.
    return len(rows) if not kept and len(done) == len(rows) else 0


def apply_fences(cache: Any, using: str) -> int:
    """
    Order up to ``REPAIR_BATCH`` rows fenced while Redis was down after the writes queued
    before their direct write and before those queued after it, and delete their fences in
    the same transaction; return how many. Called by :func:`apply_repairs`, which holds
    the model's repair lock.

    The line is drawn by time: the sequence of the last write the queue holds from before
    the fence's time (its latest direct write) becomes the row's ``wb_seq`` floor (never
    lowered), or its tombstone's. So a write queued after Redis came back, before this
    flush, still lands. Ordered by the clocks of the web process and of Redis: to within
    their difference.
    """
    from cachepatterns_app.models import WriteBehindFence, WriteBehindTombstone
    from cachepatterns_app.patterns.write_behind.rows import flushing

    where = router.db_for_write(WriteBehindFence)
    fenced: Any = models.QuerySet(WriteBehindFence, using=where)
    with transaction.atomic(using=where):
        fences = list(fenced.filter(label=cache.label, db_alias=using).order_by("id")[:REPAIR_BATCH])
        if not fences:
            return 0
        times = [max(1, int(f.created.timestamp() * 1000)) for f in fences]
        floors = [
            int(seq) for seq in cache._store().script("wb_seq_before", (cache.wb_keys(using).stream,), times)
        ]
        pks = [cache.pk_field.to_python(f.pk_text) for f in fences]
        by_floor: dict[int, list[Any]] = {}
        for pk, floor in zip(pks, floors, strict=True):
            by_floor.setdefault(floor, []).append(pk)
        with transaction.atomic(using=using), flushing():
            present = set(
                models.QuerySet(cache.model, using=using).filter(pk__in=pks).values_list("pk", flat=True)
            )
            gone = {pk: _pk_text(cache, pk) for pk in pks if pk not in present}
            tombs = dict(
                models.QuerySet(WriteBehindTombstone, using=using)
                .filter(label=cache.label, pk_text__in=list(gone.values()))
                .values_list("pk_text", "seq")
            )
            for floor, group in by_floor.items():
                rows = [pk for pk in group if pk in present]
                if rows and floor:
                    models.QuerySet(cache.model, using=using).filter(pk__in=rows).update(
                        wb_seq=Greatest(F("wb_seq"), Value(floor))
                    )
                # A tombstone is never lowered: a newer flushed delete keeps its sequence.
                deleted = [pk for pk in group if pk in gone and tombs.get(gone[pk], 0) < floor]
                if deleted:
                    record_tombstones(cache, using, deleted, floor)
        fenced.filter(pk__in=[f.pk for f in fences]).delete()
    from cachepatterns_app.invalidation import send

    commands: dict[Any, str] = {}
    for floor, group in by_floor.items():
        commands.update(cache.fence(group, using, floor, clean=True))
    send(commands)
    logger.warning(
        "Applied %d write-behind fence(s) of %s recorded while Redis was down", len(fences), cache.label
    )
    return len(fences)
