"""
The flush: read queued writes through the consumer group, coalesce them to the
latest state per row, apply them in one database transaction, acknowledge them only
after the commit.

- **Ordered per row, idempotent.** Each queued write carries its sequence; the
  transaction locks the rows (and their tombstones) and applies a write only if its
  sequence is higher than the row's ``wb_seq`` (or its tombstone's). So an older
  state never overwrites a newer one — with several workers, a redelivered batch, or
  a write that reached the database directly — and applying a batch twice changes
  nothing the second time (state-based: the row is set, never incremented).
- **Nothing lost.** A worker that dies before its commit leaves its entries pending;
  after ``RECLAIM_IDLE`` seconds any flush claims them. One that dies after its commit
  but before its acknowledgement has its entries claimed too, and skipped as stale.
- **Failures.** A database that is down or busy (operational errors, deadlocks, lock
  waits) is retried a few times with exponential backoff and jitter, then left for the
  next flush. A batch that fails on its data (an integrity or data error) is split in
  halves until the failing row is alone; the rest is applied. The failing write stays
  queued and is retried with backoff; after ``MAX_RETRIES`` deliveries it moves to the
  dead letters, and its state in Redis is dropped so reads show the database's row.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    models,
    transaction,
)
from django.db.models import Model

from cachepatterns_app import stats
from cachepatterns_app.changes import UPDATE, RowChange
from cachepatterns_app.exceptions import CacheUnavailable, SerializationError, WriteBehindError
from cachepatterns_app.leases import ttl_ms
from cachepatterns_app.patterns.write_behind import state as row_state
from cachepatterns_app.patterns.write_behind.model import (
    _pk_text,
    apply_repairs,
    fences_pending,
    record_tombstones,
)
from cachepatterns_app.patterns.write_behind.queue import Entry, Queue, consumer_name
from cachepatterns_app.patterns.write_behind.rows import SEQ_FIELD, WriteBehindRowCache, flushing
from cachepatterns_app.patterns.write_behind.sql import locked_tombstones, writer_for

__all__ = ["FlushResult", "flush_model"]

logger = logging.getLogger(__name__)

#: Attempts at one batch while the database is unreachable, within one flush.
TRANSIENT_ATTEMPTS = 3


@dataclass
class FlushResult:
    rows: int = 0  # rows written (inserted, updated or deleted)
    entries: int = 0  # queue entries acknowledged
    stale: int = 0  # writes skipped: the database holds something newer
    failed: int = 0  # writes that failed and stay queued
    dead: int = 0  # writes moved to the dead letters
    left: int = 0  # writes left queued because the database was unreachable
    batches: list[float] = field(default_factory=list)

    def add(self, other: FlushResult) -> None:
        for name in ("rows", "entries", "stale", "failed", "dead", "left"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.batches += other.batches


@dataclass
class _Row:
    """The entries of one row in a batch: the latest wins, the others are obsolete."""

    pk: Any
    entries: list[Entry]

    @property
    def latest(self) -> Entry:
        return max(self.entries, key=lambda e: e.seq)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]


def flush_model(
    cache: WriteBehindRowCache,
    using: str,
    *,
    consumer: str | None = None,
    max_batches: int | None = None,
    drain: bool = False,
    wait_for_repairs: bool = True,
) -> FlushResult:
    """
    Flush the queued writes of ``cache``'s model in database ``using``. With
    ``wait_for_repairs=False`` (the beat's tasks) a model whose outage repairs another
    flush is applying is skipped (an empty result), not waited for.
    """
    settings = cache.settings
    queue = cache.queue(using)
    consumer = consumer or consumer_name()
    batch_size = int(settings["BATCH_SIZE"])
    total = FlushResult()
    queue.ensure_group()
    # What was written around Redis while it was unreachable, first (fences, then
    # recorded increments): nothing queued may be flushed before.
    if not apply_repairs(cache, using, wait=wait_for_repairs):
        return total
    if connections[using].in_atomic_block:
        # Inside a transaction of the caller's: see _flush_in_callers_transaction.
        total.add(_flush_in_callers_transaction(cache, using, queue, batch_size, max_batches))
        _warn_if_behind(cache, queue, float(settings["WARN_AFTER"]))
        return total
    # What this worker was handed and never finished, what dead workers held, and
    # writes whose retry backoff is over; then everything new.
    if drain:
        # A worker shutting down finishes what it was handed (warm shutdown).
        own = queue.read_own(consumer, batch_size)
        if own:
            total.add(_apply_entries(cache, using, queue, own, wait=wait_for_repairs))
    # What dead workers held, and writes whose retry backoff is over (the claim checks
    # the backoff, so a failing write is not retried at every flush); then everything new.
    claimed = queue.claim_due(consumer, batch_size, float(settings["RECLAIM_IDLE"]))
    if claimed:
        total.add(_apply_entries(cache, using, queue, claimed, wait=wait_for_repairs))
    batches = 0
    while max_batches is None or batches < max_batches:
        entries = queue.read_new(consumer, batch_size)
        if not entries:
            break
        batches += 1
        result = _apply_entries(cache, using, queue, entries, wait=wait_for_repairs)
        total.add(result)
        if result.left:
            break  # the database is unreachable: the rest waits for the next flush
        if len(entries) < batch_size:
            # The read returned everything queued when it ran: what came later is the
            # next flush's (early-flush triggers and beat see to it). Saves a round trip.
            break
    _warn_if_behind(cache, queue, float(settings["WARN_AFTER"]))
    return total


def _flush_in_callers_transaction(
    cache: WriteBehindRowCache, using: str, queue: Queue, batch_size: int, max_batches: int | None
) -> FlushResult:
    """
    Flush inside a transaction of the caller's (``objects.flushed()`` in a view under
    ``ATOMIC_REQUESTS``, or in a ``TestCase``): the rows are written in that transaction,
    so what the caller reads next in it has them.

    The entries are read from the stream without the consumer group, so none is
    delivered to this process: if the caller rolls back, they stay as they were, new,
    and the next flush takes them (delivered and rolled back, they would wait for
    ``RECLAIM_IDLE``). They are acknowledged and deleted when the caller commits. Entries
    another worker holds may be among them: the row locks order the two, and whichever
    comes second finds them stale. Entries already applied in this transaction (awaiting
    its commit) are skipped, so flushing twice in it counts them once.
    """
    level = _isolation(using)
    if level not in ("read committed", "read uncommitted"):
        raise WriteBehindError(
            f"Write-behind flush of {cache.label} inside a transaction at {level.upper()}: it could "
            "not see what other processes committed after the transaction's snapshot (a direct "
            "write's fence, another flush's rows), and would write over them. Flush before the "
            "transaction, or run it at READ COMMITTED (Django's default)."
        )
    total = FlushResult()
    awaiting = _awaiting(using)
    after = ""
    batches = 0
    while max_batches is None or batches < max_batches:
        entries = queue.peek(after, batch_size)
        if not entries:
            break
        after = entries[-1].id
        batches += 1
        fresh = [entry for entry in entries if entry.id not in awaiting]
        if fresh:
            result = _apply_entries(cache, using, queue, fresh)
            total.add(result)
            if result.left:
                break
        if len(entries) < batch_size:
            break
    return total


def _isolation(using: str) -> str:
    """The isolation level of the current transaction of ``using``, in lower case with spaces."""
    connection: Any = connections[using]
    if connection.vendor == "postgresql":
        sql = "SHOW transaction_isolation"
    elif connection.vendor == "mysql":
        # MariaDB before 11.1 knows only the old name; MySQL 8 only the new one.
        sql = f"SELECT @@SESSION.{'tx_isolation' if connection.mysql_is_mariadb else 'transaction_isolation'}"
    else:
        return "read committed"  # SQLite: one writer at a time, what is committed is seen
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return str(cursor.fetchone()[0]).lower().replace("-", " ")


def _awaiting(using: str) -> set[str]:
    """The ids of entries applied in the current transaction of ``using`` (acknowledged at its commit)."""
    connection = connections[using]
    # Keyed by the outermost atomic block: a new transaction has a new one.
    outermost = connection.atomic_blocks[0]
    memo = getattr(connection, "_cachepatterns_awaiting", None)
    if memo is None or memo[0] is not outermost:
        memo = (outermost, set())
        connection._cachepatterns_awaiting = memo  # type: ignore[attr-defined]
    return memo[1]


def _apply_entries(
    cache: WriteBehindRowCache, using: str, queue: Queue, entries: list[Entry], *, wait: bool = True
) -> FlushResult:
    """Apply ``entries``; ``wait``: wait for another flush's outage repairs rather than leave the batch."""
    rows: dict[Any, _Row] = {}
    result = FlushResult()
    for entry in entries:
        try:
            pk = cache.canonical_pk(
                cache.codec.decode_field(cache.pk_attname, _json(entry, cache.pk_attname))
            )
        except (ValueError, TypeError, SerializationError) as e:
            _poison(cache, queue, using, [_Row(None, [entry])], f"unreadable queue entry: {e}", result)
            continue
        rows.setdefault(pk, _Row(pk, [])).entries.append(entry)
    _apply_rows(cache, using, queue, list(rows.values()), result, wait=wait)
    return result


def _json(entry: Entry, attname: str) -> Any:
    return row_state.loads(entry.state[attname])


def _apply_rows(
    cache: WriteBehindRowCache,
    using: str,
    queue: Queue,
    rows: list[_Row],
    result: FlushResult,
    *,
    wait: bool = True,
) -> None:
    if not rows:
        return
    retried_integrity = False
    for attempt in range(TRANSIENT_ATTEMPTS):
        started = time.monotonic()
        try:
            applied, stale = _commit(cache, using, rows)
        except _FencesPending:
            if not apply_repairs(cache, using, wait=wait):
                break  # another flush applies them (a beat task: it does not wait): later
            continue
        except _Raced as e:
            # Rolled back; the other flush has committed (this one waited for it), so
            # the next attempt sees its write.
            logger.info("Write-behind flush of %s raced another flush (%s); applied again", cache.label, e)
            stats.record("wb_retried", cache.label, len(rows))
            continue
        except (OperationalError, InterfaceError) as e:
            if connections[using].in_atomic_block:
                # The caller's transaction is broken (a deadlock rolls it back on MySQL)
                # and a reconnect would end it silently: the caller must hear of it.
                raise
            stats.record("wb_retried", cache.label, len(rows))
            logger.warning(
                "Write-behind flush of %s: the database is unavailable (%s); attempt %d of %d",
                cache.label,
                e,
                attempt + 1,
                TRANSIENT_ATTEMPTS,
            )
            _reconnect(using)
            time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
            continue
        except (IntegrityError, DataError, SerializationError, ValueError, TypeError, DatabaseError) as e:
            if isinstance(e, IntegrityError) and not retried_integrity:
                # Another flush may have inserted one of these rows meanwhile (both saw it
                # missing): once more, and the row is found and updated.
                retried_integrity = True
                continue
            if len(rows) == 1:
                _poison(cache, queue, using, rows, f"{type(e).__name__}: {e}", result)
                return
            half = len(rows) // 2
            _apply_rows(cache, using, queue, rows[:half], result, wait=wait)
            _apply_rows(cache, using, queue, rows[half:], result, wait=wait)
            return
        elapsed = time.monotonic() - started
        result.batches.append(elapsed)
        if connections[using].in_atomic_block:
            _after_callers_commit(cache, using, queue, rows, applied, stale, result)
        else:
            _after_commit(cache, using, queue, rows, applied, stale, result)
        observe = getattr(stats, "observe", None)
        if observe is not None:
            observe("wb_flush", cache.label, elapsed)
        return
    result.left += sum(len(row.entries) for row in rows)


def _after_callers_commit(
    cache: WriteBehindRowCache,
    using: str,
    queue: Queue,
    rows: list[_Row],
    applied: list[tuple[Any, int]],
    stale: list[tuple[Any, int]],
    result: FlushResult,
) -> None:
    """
    The rows were written in the caller's transaction: acknowledge the entries when it
    commits, not now (acknowledged now, a rollback would lose them with the rows).
    """
    _awaiting(using).update(entry.id for row in rows for entry in row.entries)
    try:
        # robust: the caller's commit has happened; an error here must not fail its
        # request (the entries then stay queued, and a later flush skips them as stale).
        transaction.on_commit(
            lambda: _after_commit(cache, using, queue, rows, applied, stale, FlushResult()),
            using=using,
            robust=True,
        )
    except transaction.TransactionManagementError:
        # set_autocommit(False) by hand: on_commit() refuses; nothing can wait for it.
        _after_commit(cache, using, queue, rows, applied, stale, result)
        return
    # Counted now, as written: what the caller reads in its transaction has them.
    _count(result, applied, stale, sum(len(row.entries) for row in rows))


def _count(result: FlushResult, applied: list[Any], stale: list[Any], entries: int) -> None:
    result.rows += len(applied)
    result.stale += len(stale)
    result.entries += entries


def _reconnect(using: str) -> None:
    with contextlib.suppress(DatabaseError):
        connections[using].close()
    close_old_connections()


def _commit(
    cache: WriteBehindRowCache, using: str, rows: list[_Row]
) -> tuple[list[tuple[Any, int]], list[tuple[Any, int]]]:
    """Apply the latest write of each row in one transaction; return (applied, stale) (pk, seq)."""
    from cachepatterns_app.writes import record

    model = cache.model
    latest = {row.pk: row.latest for row in rows}
    texts = {pk: _pk_text(cache, pk) for pk in latest}
    applied: list[tuple[Any, int]] = []
    stale: list[tuple[Any, int]] = []
    connection = connections[using]
    vendor = connection.vendor
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using), flushing():
        if outermost and vendor == "postgresql":
            # The new-row checks (_check_new_rows) need each statement's own snapshot, taken
            # after the advisory locks: at REPEATABLE READ the first statement's would hide
            # the other flush's commit. So the flush's own transaction reads committed,
            # whatever the connection's level (a transaction of the caller's is left alone).
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        writer = writer_for(model, using, SEQ_FIELD)
        old: list[Model] = []
        found = None
        if writer.supported and not _families_watch(model):
            found = writer.locked_seqs(list(latest))
        if found is not None:
            seqs = found
        else:
            query: models.QuerySet[Any, Any] = models.QuerySet(model, using=using).filter(pk__in=list(latest))
            if connections[using].features.has_select_for_update:
                # In key order: two flushes of overlapping batches lock in the same order.
                query = query.order_by("pk").select_for_update()
            # The rows as they were: a family keyed by a value the write changes is
            # bumped under the old value too.
            old = list(query)
            seqs = {row.pk: int(getattr(row, SEQ_FIELD, 0) or 0) for row in old}
        if fences_pending(cache, using, list(texts.values())):
            # A direct write made while Redis was unreachable (a process whose breaker is
            # still open, say) after this flush applied its repairs: its fence must come
            # first, or a write queued before it would overwrite it. Asked with the rows
            # locked, so a direct write committed before is seen with its fence (recorded
            # in its transaction, or just after it).
            raise _FencesPending
        if vendor == "postgresql":
            _lock_new_rows(
                using,
                cache.label,
                [(texts[pk], entry.deleted) for pk, entry in latest.items() if pk not in seqs],
            )
        tombs = locked_tombstones(using, cache.label, list(texts.values()))
        creates: list[Model] = []
        created: list[Any] = []  # their keys
        updates: list[Model] = []
        deletes: list[Any] = []
        for pk, entry in latest.items():
            floor = max(seqs.get(pk, 0), tombs.get(texts[pk], 0))
            if entry.seq <= floor:
                stale.append((pk, entry.seq))
                continue
            applied.append((pk, entry.seq))
            if entry.deleted:
                if pk in seqs:
                    deletes.append(pk)
                continue
            obj = row_state.decode_state(cache.codec, entry.state, using)
            obj.__dict__[SEQ_FIELD] = entry.seq
            if pk in seqs:
                updates.append(obj)
            else:
                creates.append(obj)
                created.append(pk)
        if deletes:
            # Through the collector: cascades and the delete signals of related rows run
            # as for any delete (this model's own row cache stays quiet: flushing()).
            models.QuerySet(model, using=using).filter(pk__in=deletes).delete()
        gone: list[Any] = []  # deleted rows the database does not hold
        for pk, entry in latest.items():
            if entry.deleted and (pk, entry.seq) in applied:
                record_tombstones(cache, using, [pk], entry.seq)
                if pk not in seqs:
                    gone.append(pk)
        if not writer.supported:
            _write_with_orm(model, using, creates, updates)
        else:
            if updates:
                if writer.update_kind == "orm":
                    _write_with_orm(model, using, [], updates)
                else:
                    writer.update(updates)
            if creates:
                writer.insert(creates)
        if vendor in ("mysql", "postgresql"):
            _check_new_rows(cache, using, latest, texts, created, gone)
        if updates or creates:
            # What depends on these rows (families, multi-table relatives) changes now.
            written = [obj.pk for obj in (*updates, *creates)]
            record(
                RowChange(
                    model,
                    using,
                    written,
                    UPDATE,
                    old=old,
                    new=[*updates, *creates],
                    own=False,
                )
            )
    return applied, stale


class _Raced(Exception):
    """Another flush wrote a row this batch could not see: roll back and apply the batch again."""


class _FencesPending(Exception):
    """A fence was recorded after this flush's repairs: apply the repairs, then the batch again."""


def _lock_new_rows(using: str, label: str, rows: list[tuple[str, bool]]) -> None:
    """
    PostgreSQL: lock the batch's rows the database does not hold, shared for a create
    and exclusive for a delete, until the commit (see :func:`_check_new_rows`).
    """
    if not rows:
        return
    shared = sorted({_lock_key(label, text) for text, deleted in rows if not deleted})
    exclusive = sorted({_lock_key(label, text) for text, deleted in rows if deleted})
    with connections[using].cursor() as cursor:
        for function, keys in (
            ("pg_advisory_xact_lock", exclusive),
            ("pg_advisory_xact_lock_shared", shared),
        ):
            if keys:
                # Only one of the two function names above is interpolated.
                sql = f"SELECT {function}(%s, k) FROM unnest(%s::int[]) AS k"  # noqa: S608
                cursor.execute(sql, [_LOCK_CLASS, keys])


#: The advisory lock space of these locks (the two-integer form; a project's own
#: advisory locks in it would only ever wait for a flush, never change what it writes).
_LOCK_CLASS = 0x63700001


def _lock_key(label: str, text: str) -> int:
    digest = hashlib.blake2b(f"{label}\x00{text}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _check_new_rows(
    cache: WriteBehindRowCache,
    using: str,
    latest: dict[Any, Entry],
    texts: dict[Any, str],
    created: list[Any],
    gone: list[Any],
) -> None:
    """
    Raise :class:`_Raced` if a concurrent flush wrote one of the batch's new rows meanwhile.

    A row the database does not hold has no row lock to wait for: a flush with its queued
    create and another with its (newer) queued delete can run at once, each find nothing,
    and the delete's flush record a tombstone while the create's flush inserts the row,
    which would then outlive its delete. So each side checks, after its own write, for the
    other's:

    - MySQL/MariaDB: a locking read waits for a row (or tombstone) another transaction
      inserted and has not committed, so the create's flush reads the tombstones of what
      it inserted, and the delete's flush reads the rows it found missing. Whichever
      writes first is seen by the other, which rolls back and applies its batch again
      (then skipping the create as stale, or deleting the row).
    - PostgreSQL: a locking read does not see another transaction's uncommitted insert;
      the advisory locks of :func:`_lock_new_rows` order the two flushes instead, so
      the delete's flush, once it holds its lock, sees any create committed before.
    """
    model = cache.model
    if gone and models.QuerySet(model, using=using).filter(pk__in=gone).select_for_update().exists():
        raise _Raced(f"a concurrent flush created a row of {cache.label} this batch deletes")
    if created and connections[using].vendor == "mysql":
        # By key, never through the probe: this read must wait for an uncommitted tombstone.
        found = locked_tombstones(using, cache.label, [texts[pk] for pk in created], probe=False)
        if any(found.get(texts[pk], 0) >= latest[pk].seq for pk in created):
            raise _Raced(f"a concurrent flush deleted a row of {cache.label} this batch creates")


def _families_watch(model: type[Model]) -> bool:
    """Whether a family depends on ``model``'s rows (or a multi-table child's): it needs the old rows."""
    from cachepatterns_app.registry import dependencies_of, descendants_of, own_dependencies_of

    return bool(dependencies_of(model)) or any(own_dependencies_of(child) for child in descendants_of(model))


def _write_with_orm(model: type[Model], using: str, creates: list[Model], updates: list[Model]) -> None:
    """Write the batch through ``bulk_update`` / ``bulk_create`` (what :mod:`.sql` does not cover)."""
    if updates:
        fields = [f.name for f in model._meta.concrete_fields if not f.primary_key]
        plain: Any = models.QuerySet(model, using=using)
        plain.bulk_update(updates, fields)
    if creates:
        inserting: Any = models.QuerySet(model, using=using)
        stamped = [
            f
            for f in model._meta.concrete_fields
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        ]
        queued = [{f.attname: obj.__dict__.get(f.attname) for f in stamped} for obj in creates]
        inserting.bulk_create(creates)
        if stamped:
            # bulk_create ran pre_save() again (auto_now: now); the row must hold
            # what the save queued and the readers saw.
            for obj, values in zip(creates, queued, strict=True):
                obj.__dict__.update(values)
            inserting.bulk_update(creates, [f.name for f in stamped])


def _after_commit(
    cache: WriteBehindRowCache,
    using: str,
    queue: Queue,
    rows: list[_Row],
    applied: list[tuple[Any, int]],
    stale: list[tuple[Any, int]],
    result: FlushResult,
) -> None:
    ids = [entry_id for row in rows for entry_id in row.ids]
    keys = cache.wb_keys(using)
    ttl = ttl_ms(cache.ttl)
    commands: list[tuple[Any, ...]] = []
    if applied:
        commands.append(
            (
                "SCRIPT",
                "wb_flushed",
                tuple(keys.row(pk).value for pk, _ in applied),
                (ttl, *(str(seq) for _, seq in applied)),
            )
        )
    # A write skipped as stale: the database holds something newer, which Redis must
    # not hide behind the older state (drop it unless an even newer write is queued).
    commands += [
        ("SCRIPT", "wb_fence", (keys.row(pk).value, keys.row(pk).lease), (str(seq),)) for pk, seq in stale
    ]
    try:
        queue.acknowledge(ids, then=commands)  # one round trip
    except CacheUnavailable as e:
        # Committed but not acknowledged: the entries are delivered again and skipped
        # as stale then. Nothing is lost; the row stays dirty until that flush.
        logger.warning(
            "Write-behind flush of %s committed but could not acknowledge the entries or mark "
            "the rows clean: %s",
            cache.label,
            e,
        )
        return
    _count(result, applied, stale, len(ids))
    if applied:
        stats.record("wb_flushed", cache.label, len(applied))


def _poison(
    cache: WriteBehindRowCache,
    queue: Queue,
    using: str,
    rows: Sequence[_Row],
    error: str,
    result: FlushResult,
) -> None:
    max_retries = int(cache.settings["MAX_RETRIES"])
    for row in rows:
        for entry in row.entries:
            if entry.deliveries >= max_retries:
                logger.error(
                    "Write-behind write %s of %s pk=%r failed %d times; moved to the dead letters: %s",
                    entry.id,
                    cache.label,
                    row.pk,
                    entry.deliveries,
                    error,
                )
                try:
                    queue.dead_letter(entry, error)
                    if row.pk is not None:
                        keys = cache.wb_keys(using).row(row.pk)
                        # Reads show the database's row again, not a write that will not land.
                        queue.store.script("wb_fence", (keys.value, keys.lease), (str(entry.seq),))
                except CacheUnavailable as e:
                    logger.warning("Could not dead-letter %s: %s", entry.id, e)
                    continue
                stats.record("wb_dead_lettered", cache.label)
                result.dead += 1
            else:
                logger.warning(
                    "Write-behind write %s of %s pk=%r failed (delivery %d of %d), retried later: %s",
                    entry.id,
                    cache.label,
                    row.pk,
                    entry.deliveries,
                    max_retries,
                    error,
                )
                with contextlib.suppress(CacheUnavailable):
                    queue.record_failure(entry, error)
                stats.record("wb_failed", cache.label)
                result.failed += 1


def _warn_if_behind(cache: WriteBehindRowCache, queue: Queue, threshold: float) -> None:
    try:
        age, length = queue.backlog()
        # The admin page's chart of the queue depth gets a point per flush, not
        # only per look at the page.
        stats.gauge("wb_pending", cache.label, float(length))
    except CacheUnavailable:
        return
    if age is not None and age > threshold:
        logger.warning(
            "Write-behind queue of %s: the oldest waiting write is %.0f s old (WARN_AFTER=%s). "
            "Is the flush running (Celery beat and a worker)? See cachepatterns_stats.",
            cache.label,
            age,
            threshold,
        )
