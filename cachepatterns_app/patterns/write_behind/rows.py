"""
The row cache of a write-behind model: reads see the latest queued write, saves and
deletes are queued, and writes that reach the database directly are ordered after
the queued ones.

Reads (``get(pk=…)``, ``get_many``) answer from the row's state in Redis when there
is one — dirty (queued, not flushed), clean (cached after a read or a flush) or
deleted (a queued delete: ``DoesNotExist``) — and otherwise load the row from the
database under the same lease as cache-aside, storing it clean with a TTL.

Every write draws a sequence number from the model's counter in Redis, and the
database row keeps the sequence of the last write it applied (``wb_seq``). The flush
applies a queued write only if its sequence is higher, so a write that went to the
database directly (``save(sync=True)``, ``update()``, a queryset delete) is never
overwritten by an older queued one, and a redelivered batch changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

from django.db import models, router
from django.db.models import Model

from cachepatterns_app import stats
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CacheUnavailable, SerializationError, WriteBehindError
from cachepatterns_app.identity import NotCanonical, database_identity
from cachepatterns_app.keys import RowKeys, WriteBehindKeys, write_behind_keys
from cachepatterns_app.leases import LEASED, await_turn, fill_allowed, lease_lifetime_ms, ttl_ms
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.patterns.write_behind import state as row_state
from cachepatterns_app.patterns.write_behind.queue import Queue, _text
from cachepatterns_app.store import new_token

__all__ = ["WriteBehindRowCache", "flushing"]

logger = logging.getLogger(__name__)

SEQ_FIELD = "wb_seq"

_local = threading.local()


class flushing:
    """Inside, writes of write-behind rows are the flush's own: their row caches stay quiet."""

    def __enter__(self) -> None:
        _local.depth = getattr(_local, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _local.depth -= 1


def _in_flush() -> bool:
    return bool(getattr(_local, "depth", 0))


class WriteBehindRowCache(RowCache):
    """Row cache whose writes are queued in Redis and flushed to the database later."""

    def __init__(self, model: type[Model], *, ttl: Any, sync_creates: bool = False) -> None:
        super().__init__(model, ttl=ttl)
        self.sync_creates = sync_creates
        self._sequences: dict[str, int] = {}
        self._limits_memo: tuple[Any, int, int] | None = None

    # -- keys and the queue -----------------------------------------------------------

    def wb_keys(self, using: str) -> WriteBehindKeys:
        return write_behind_keys(self.label, database_identity(using))

    def queue(self, using: str) -> Queue:
        return Queue(self._store(), self.wb_keys(using))

    def keys(self, pk: Any, using: str) -> RowKeys:
        return self.wb_keys(using).row(self.canonical_pk(pk))

    @cached_property
    def columns(self) -> list[Any]:
        return list(self.model._meta.concrete_fields)

    @cached_property
    def _full_plan(self) -> row_state.Plan:
        # What a whole-row save stores, worked out once: saves are the hot path.
        return row_state.Plan(self.model, [f for f in self.columns if f.attname != SEQ_FIELD])

    @property
    def settings(self) -> dict[str, Any]:
        return get_settings().raw["WRITE_BEHIND"]  # type: ignore[no-any-return]

    @cached_property
    def _plain_pk(self) -> bool:
        """
        Whether the key's stored value is exactly ``canonical_pk()``'s: Django's own UUID,
        integer and text fields (a Decimal key is rounded by ``stored_values``, where
        ``canonical_pk`` refuses one with more places than the column keeps).
        """
        from cachepatterns_app.identity import custom_field, value_field

        target = value_field(self.pk_field)
        plain = (models.UUIDField, models.IntegerField, models.AutoField, models.CharField, models.TextField)
        return not custom_field(target) and isinstance(target, plain)

    def _limits(self) -> tuple[int, int]:
        """(MAX_PENDING, BATCH_SIZE), read once per settings object: asked on every save."""
        settings = get_settings()
        memo = self._limits_memo
        if memo is None or memo[0] is not settings:
            wb = settings.raw["WRITE_BEHIND"]
            memo = self._limits_memo = (settings, int(wb["MAX_PENDING"]), int(wb["BATCH_SIZE"]))
        return memo[1], memo[2]

    # -- reads --------------------------------------------------------------------------

    def get(self, pk: Any, read_db: str, cache_db: str) -> Model:
        try:
            pk = self.canonical_pk(pk)
        except NotCanonical:
            return self._query(read_db).get(pk=pk)
        keys = self.wb_keys(cache_db).row(pk)
        store = self._store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        for _attempt in range(2):
            try:
                reply = await_turn(
                    lambda: store.script("wb_read", (keys.value, keys.lease), (token, lease_ms)), self.label
                )
            except CacheUnavailable as e:
                # Queued writes are unreachable: the database is all there is.
                return self._degraded(e, read_db, pk)
            if reply is None:
                stats.record("bypass", self.label)
                return self._query(read_db).get(pk=pk)
            if reply[0] == LEASED:
                self._healed(keys.value, reply)
                return self._load_and_fill(keys, token, pk, read_db, cache_db)
            found = row_state.as_mapping(reply[1])
            if found.get(row_state.FLAG) == row_state.DELETED:
                stats.record("hit", self.label)
                raise _missing(self.model)(f"{self.model._meta.object_name} matching query does not exist.")
            try:
                instance = self._decode(found, read_db)
                if instance.__dict__[self.pk_attname] != pk:
                    raise SerializationError(f"the state under {keys.value} is another row")
            except SerializationError as e:
                if found.get(row_state.FLAG) == row_state.DIRTY:
                    # The only copy of a queued write: never delete it on a read.
                    logger.error("Unreadable write-behind state %s kept for the flush: %s", keys.value, e)
                    stats.record("corrupt", self.label)
                    return self._query(read_db).get(pk=pk)
                if not self._discard(keys.value, e):
                    return self._query(read_db).get(pk=pk)
                continue
            stats.record("hit", self.label)
            return instance
        return self._query(read_db).get(pk=pk)

    def get_by_unique(self, field_name: str, value: Any, read_db: str, cache_db: str) -> Model:
        # A queued write may have changed the unique value: the pointer could not be
        # checked against it. Unique lookups of write-behind models read the database.
        stats.record("bypass", self.label)
        return self._query(read_db).get(**{field_name: value})

    def get_many(self, pks: Iterable[Any], read_db: str, cache_db: str) -> dict[Any, Model]:
        wanted: dict[Any, RowKeys] = {}
        keys_of = self.wb_keys(cache_db)
        for pk in pks:
            try:
                typed = self.canonical_pk(pk)
            except NotCanonical:
                continue
            wanted.setdefault(typed, keys_of.row(typed))
        if not wanted:
            return {}
        store = self._store()
        try:
            replies = store.pipeline([("HGETALL", k.value) for k in wanted.values()], raise_on_error=False)
        except CacheUnavailable as e:
            self._raise_unless_degrading(e)
            return self._query(read_db).in_bulk(list(wanted))
        found: dict[Any, Model] = {}
        gone: set[Any] = set()
        missing: list[Any] = []
        for pk, reply in zip(wanted, replies, strict=True):
            if isinstance(reply, Exception) or not reply:
                missing.append(pk)
                continue
            data = row_state.as_mapping([x for pair in dict(reply).items() for x in pair])
            if data.get(row_state.FLAG) == row_state.DELETED:
                gone.add(pk)
                continue
            try:
                found[pk] = self._decode(data, read_db)
            except SerializationError:
                missing.append(pk)
        if found:
            stats.record("hit", self.label, len(found))
        if missing:
            loaded = self._query(cache_db).in_bulk(missing)
            stats.record("miss", self.label, len(missing))
            for instance in loaded.values():
                instance._state.db = read_db
            found.update(loaded)
        return {pk: found[pk] for pk in wanted if pk in found and pk not in gone}

    def _decode(self, found: dict[str, str], db: str) -> Model:
        instance = row_state.decode_state(self.codec, found, db)
        # The state's own field says 0 for a queued write: its sequence is the state's.
        instance.__dict__[SEQ_FIELD] = int(found.get(row_state.SEQ, "0") or 0)
        return instance

    def _load_and_fill(self, keys: RowKeys, token: str, pk: Any, read_db: str, cache_db: str) -> Model:
        stats.record("miss", self.label)
        try:
            instance = self._query(cache_db).get(pk=pk)
        except BaseException:
            self._release(keys, token)
            raise
        if fill_allowed(cache_db):
            self._fill(keys, token, instance)
        else:
            self._release(keys, token)
        instance._state.db = read_db
        return instance

    def _fill(self, keys: RowKeys, token: str, instance: Model, wait: bool = False) -> bool:
        values = {f.attname: instance.__dict__.get(f.attname) for f in self.columns}
        try:
            fields = row_state.encode_fields(self.codec, values)
        except WriteBehindError as e:
            logger.warning("Not caching %s pk=%r: %s", self.label, instance.pk, e)
            self._release(keys, token)
            return False
        seq = str(getattr(instance, SEQ_FIELD, 0) or 0)
        args = (
            token,
            ttl_ms(self.ttl),
            row_state.SEQ,
            seq,
            row_state.FINGERPRINT,
            self.codec.fingerprint,
            *fields,
        )
        store = self._store()
        if wait:
            return bool(store.script("wb_fill", (keys.value, keys.lease), args))
        store.script_no_reply("wb_fill", (keys.value, keys.lease), args)
        stats.record("fill", self.label)
        return True

    # -- queued writes -------------------------------------------------------------------

    def db_for(self, instance: Model | None = None, using: str | None = None) -> str:
        return (
            using or (instance._state.db if instance is not None else None) or router.db_for_write(self.model)
        )

    def queue_save(self, instance: Model, using: str | None = None, update_fields: Any = None) -> int:
        """Queue ``instance``'s save; return its sequence. Raises ``WriteBehindError``."""
        db = self.db_for(None, using)
        adding = instance._state.adding
        fields: list[Any] | row_state.Plan
        if update_fields is not None:
            names = {getattr(self.model._meta.get_field(n), "attname", n) for n in update_fields}
            fields = [f for f in self.columns if f.attname in names and not f.primary_key]
            mode = "merge"
        else:
            fields = self._full_plan
            mode = "full"
        if instance.pk is None:
            raise WriteBehindError(
                f"{self.label}: a write-behind save needs the primary key before the insert, and "
                "this instance has none. Give the model a UUID or natural primary key, or create "
                "it with save(sync=True) (then later saves are queued)."
            )
        values = row_state.stored_values(instance, fields, self._vendor(db), adding)
        # A whole-row save has just converted the key as canonical() does (Django's own
        # key fields); anything else asks.
        pk = values[self.pk_attname] if mode == "full" and self._plain_pk else self.canonical_pk(instance.pk)
        encoded = row_state.encode_fields(self.codec, values)
        if mode == "full":
            encoded += [SEQ_FIELD, "0"]  # the flush sets the column to the write's sequence
        reply = self._write(db, pk, mode, encoded)
        if reply[0] == 0:
            self._load_row(db, pk)
            reply = self._write(db, pk, mode, encoded)
        seq = self._accepted(reply, db, instance, "save")
        instance.__dict__.update(values)  # what the database will hold
        instance.__dict__[SEQ_FIELD] = seq
        instance._state.adding = False
        instance._state.db = db
        return seq

    def queue_delete(self, instance: Model, using: str | None = None) -> int:
        db = self.db_for(instance, using)
        pk = self.canonical_pk(instance.pk)
        encoded = row_state.encode_fields(self.codec, {self.pk_attname: pk})
        return self._accepted(self._write(db, pk, "delete", encoded), db, instance, "delete")

    def incr(self, pk: Any, field_name: str, amount: int, using: str | None = None) -> int:
        """Add ``amount`` to column ``field_name`` of row ``pk`` in Redis; return the new value."""
        field: Any = self.model._meta.get_field(field_name)
        if not isinstance(field, models.IntegerField):
            raise WriteBehindError(f"{self.label}.incr(): {field_name!r} is not an integer column.")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise WriteBehindError(f"{self.label}.incr(): the amount must be an int, not {amount!r}.")
        db = self.db_for(None, using)
        pk = self.canonical_pk(pk)
        try:
            reply = self._incr_in_redis(db, pk, field.attname, amount)
        except CacheUnavailable as e:
            return self._incr_without_redis(db, pk, field, amount, e)
        if reply[0] == -5:
            # Refused before it changed anything (maxmemory, a read-only replica): as unsent
            # as a refused connection.
            refused = CacheUnavailable(f"Redis refused the increment: {_text(reply[1])}", unsent=True)
            return self._incr_without_redis(db, pk, field, amount, refused)
        if reply[0] == -3:
            raise WriteBehindError(
                f"{self.label}.incr({pk!r}, {field_name!r}): Redis cannot add to the column "
                f"({_text(reply[1]) if len(reply) > 1 else 'NULL'}); nothing was added. If it is NULL, "
                "set it with save() first."
            )
        self._accepted(reply, db, None, "incr", pk=pk, field=field, amount=amount)
        return int(reply[3])

    def _incr_in_redis(
        self, db: str, pk: Any, attname: str, amount: int, mark: tuple[str, int] | None = None
    ) -> list[Any]:
        """Run ``wb_incr`` (loading the row first if Redis lacks it); ``mark``: (key, ms) of a replay."""
        keys = self.wb_keys(db)
        row = keys.row(pk)
        script_keys: tuple[str, ...] = (row.value, keys.stream, keys.seq, row.lease)
        args: tuple[Any, ...] = (self._max_pending(), self.codec.fingerprint, attname, amount)
        if mark is not None:
            script_keys += (mark[0],)
            args += (mark[1],)
        reply: list[Any] = self._store().script("wb_incr", script_keys, args)
        if reply[0] == 0:
            try:
                self._load_row(db, pk)
            except CacheUnavailable as e:
                # The script only read (the row is not in Redis): the increment was not
                # sent, whatever stopped the row's load (a refusal at maxmemory, say).
                raise CacheUnavailable(str(e), unsent=True) from e
            reply = self._store().script("wb_incr", script_keys, args)
        return reply

    def _write(self, db: str, pk: Any, mode: str, encoded: Sequence[str]) -> list[Any]:
        keys = self.wb_keys(db)
        row = keys.row(pk)
        args = (self._max_pending(), mode, self.codec.fingerprint, *encoded)
        try:
            reply: list[Any] = self._store().script(
                "wb_write", (row.value, keys.stream, keys.seq, row.lease), args
            )
        except CacheUnavailable as e:
            return [-9, str(e), e]
        return reply

    def _accepted(self, reply: list[Any], db: str, instance: Model | None, op: str, **incr: Any) -> int:
        """Turn the queue's reply into a sequence, or fall back / raise as configured."""
        code = int(reply[0])
        if code > 0:  # the write's sequence (sequences start at 1)
            stats.record("wb_queued", self.label)
            self._maybe_trigger(db, int(reply[1]))
            return code
        policy = self.settings["ON_CACHE_FAILURE"]
        if code == -2:
            raise _missing(self.model)(
                f"{self.label} pk={instance.pk if instance else incr.get('pk')!r} was deleted"
            )
        if code in (-1, -9):
            why = (
                f"{reply[1]} writes are waiting, the limit is MAX_PENDING={self._max_pending()}"
                if code == -1
                else f"Redis is unavailable ({reply[1]})"
            )
            stats.record("wb_refused" if code == -1 else "wb_sync_fallback", self.label)
            if policy == "sync" and instance is not None:
                logger.warning("Write-behind %s of %s written synchronously: %s", op, self.label, why)
                if code == -1:
                    stats.record("wb_sync_fallback", self.label)
                self._write_sync(instance, op, db, reply)
                return int(getattr(instance, SEQ_FIELD, 0) or 0)
            raise WriteBehindError(
                f"The {op} of {self.label} was not accepted: {why}. Nothing was queued or written. "
                "Retry later, flush the queue (cachepatterns_flush), or write with save(sync=True)."
            )
        # {0} twice: the row left Redis again between its load and the write. Nothing
        # was queued, so this must not pass for an accepted write.
        raise WriteBehindError(
            f"The {op} of {self.label} was not accepted: the row was evicted from Redis while "
            "it was being loaded. Nothing was queued or written; retry."
        )

    def _write_sync(self, instance: Model, op: str, db: str, reply: list[Any]) -> None:
        """Redis refused (or is down): write the database, and fence queued older writes."""
        from cachepatterns_app.patterns.write_behind.model import sync_write

        sync_write(instance, op, db, fenced=reply[0] != -9)

    def _incr_without_redis(self, db: str, pk: Any, field: Any, amount: int, error: CacheUnavailable) -> int:
        """
        Redis did not take the increment: with ``ON_CACHE_FAILURE="sync"``, record it in
        the database, to be added to the row in Redis (and so flushed) when Redis is back.

        Not added to the column directly: Redis may hold queued increments of the row that
        the column lacks, and the flush writes the row's state, so a direct ``F() + n``
        would be overwritten (or, fenced, would drop those queued increments). And only
        when the script is known not to have run: after a timeout it may have, and
        recording it too would count it twice.
        """
        if self.settings["ON_CACHE_FAILURE"] != "sync":
            raise WriteBehindError(
                f"{self.label}.incr() was not accepted: Redis is unavailable ({error}). Nothing was "
                "queued or written."
            ) from error
        if not error.unsent:
            raise WriteBehindError(
                f"{self.label}.incr({pk!r}, {field.attname!r}, {amount}): Redis did not answer ({error}), "
                "so whether it added the amount is unknown; if it did, the flush writes it. It "
                "was not recorded in the database, where it would count twice. Retry only if a "
                "duplicate increment is acceptable."
            ) from error
        from cachepatterns_app.patterns.write_behind.model import record_increment

        total = record_increment(self, db, pk, field, amount)
        stats.record("wb_sync_fallback", self.label)
        logger.warning(
            "Write-behind incr of %s pk=%r recorded in the database (Redis is unavailable: %s); "
            "it is added to the row when Redis is back",
            self.label,
            pk,
            error,
        )
        return total

    def replay_increment(self, db: str, pk: Any, attname: str, amount: int, mark: tuple[str, int]) -> str:
        """
        Add an increment recorded while Redis was down to the row in Redis, once; return
        "added", "done" (added before: the mark says so), "dropped" (the row is gone, or its
        column holds no integer) or "wait" (the queue is full).
        """
        try:
            reply = self._incr_in_redis(db, pk, attname, amount, mark)
        except _missing(self.model):
            return "dropped"
        code = int(reply[0])
        if code > 0:
            stats.record("wb_queued", self.label)
            self._maybe_trigger(db, int(reply[1]))
            return "added"
        if code == -4:
            return "done"
        if code in (-1, -5):
            return "wait"  # the queue is full, or Redis refused the write (maxmemory): later
        if code == 0:
            # The row in Redis has another layout (a previous deploy's dirty row) or left
            # again: the flush of that write settles it; the record waits until then.
            raise WriteBehindError(f"{self.label} pk={pk!r} could not be loaded into Redis in this layout")
        return "dropped"  # -2 deleted by a queued write, -3 not an integer

    def _load_row(self, db: str, pk: Any) -> None:
        """Put the database's row into Redis (clean), so a partial write can merge into it."""
        keys = self.wb_keys(db).row(pk)
        store = self._store()
        token = new_token()
        for _attempt in range(50):
            reply = store.script("wb_read", (keys.value, keys.lease), (token, lease_lifetime_ms()))
            if reply[0] == 1:
                return  # a write or a fill got there first
            if reply[0] == LEASED:
                try:
                    instance = self._query(db).get(pk=pk)
                except _missing(self.model):
                    self._release(keys, token)
                    raise
                if self._fill(keys, token, instance, wait=True):
                    return
            import time

            time.sleep(0.01)
        raise WriteBehindError(f"{self.label} pk={pk!r}: could not load the row into Redis; retry.")

    def _maybe_trigger(self, db: str, length: int) -> None:
        batch = self._limits()[1]
        if length < batch or length % batch:
            # Once per BATCH_SIZE waiting writes, not on every save of a long backlog: a
            # lost trigger costs nothing, beat's next flush comes anyway.
            return
        keys = self.wb_keys(db)
        ttl = int(float(self.settings["FLUSH_INTERVAL"]) * 1000)
        try:
            if not self._store().execute("SET", keys.trigger, "1", "NX", "PX", ttl):
                return
        except CacheUnavailable:
            return
        try:
            from cachepatterns_app.tasks import flush_write_behind

            flush_write_behind.delay(self.model._meta.label_lower, db)
        except Exception as e:  # noqa: BLE001 - the broker is down: beat's next run flushes
            logger.warning("Could not trigger an early write-behind flush of %s: %s", self.label, e)

    def _max_pending(self) -> int:
        return self._limits()[0]

    def _vendor(self, db: str) -> str:
        from django.db import connections

        # Asked per save; connections[db] is a context-local lookup, the settings dict
        # is not (and an override of DATABASES replaces it, so the memo follows).
        config = connections.settings[db]
        memo = _vendors.get(db)
        if memo is None or memo[0] is not config:
            memo = _vendors[db] = (config, str(connections[db].vendor))
        return memo[1]

    # -- writes that reach the database directly ----------------------------------------

    def next_seq(self, using: str) -> int:
        return self.queue(using).next_seq()

    def fence(
        self, pks: Iterable[Any], using: str, seq: int | str, *, clean: bool = False
    ) -> list[tuple[tuple[Any, ...], str]]:
        """Drop the rows' state in Redis if not newer than ``seq`` (``clean``: and if clean)."""
        keys = self.wb_keys(using)
        args: tuple[str, ...] = (str(seq), "clean") if clean else (str(seq),)
        out = []
        for pk in pks:
            try:
                row = keys.row(self.canonical_pk(pk))
            except NotCanonical:
                continue
            out.append((("SCRIPT", "wb_fence", (row.value, row.lease), args), self.label))
        return out

    def invalidation(self, pks: Iterable[Any], using: str) -> list[tuple[tuple[Any, ...], str]]:
        if _in_flush():
            return []
        seq = _taken_seq(self)
        if seq == _UNAVAILABLE:
            from cachepatterns_app.patterns.write_behind.model import fence_later

            fence_later(self, using, list(pks))
            return []
        # Without a sequence (an explicit invalidate()): drop clean copies only; a dirty
        # row is the only copy of a queued write.
        return self.fence(pks, using, seq if seq is not None else "")

    def deletion(self, pks: Iterable[Any], using: str) -> list[tuple[tuple[Any, ...], str]]:
        if _in_flush():
            return []
        from cachepatterns_app.patterns.write_behind.model import record_tombstones

        pks = list(pks)
        try:
            seq = self.next_seq(using)
        except CacheUnavailable:
            from cachepatterns_app.patterns.write_behind.model import fence_later

            fence_later(self, using, pks)  # the next flush stamps their tombstones
            return []
        record_tombstones(self, using, pks, seq)
        return self.fence(pks, using, seq)

    def saved(
        self, instance: Model, using: str, update_fields: Any = None, pk: Any = None
    ) -> tuple[list[tuple[tuple[Any, ...], str]], Any]:
        if _in_flush():
            return [], None
        seq = getattr(instance, SEQ_FIELD, 0) or 0
        return self.fence([instance.pk if pk is None else pk], using, seq), None

    def update_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        seq = _take_seq(self, router.db_for_write(self.model))
        return kwargs if seq == _UNAVAILABLE else {**kwargs, SEQ_FIELD: seq}

    def before_bulk_update(self, objs: Sequence[Model], fields: list[str]) -> list[str]:
        seq = _take_seq(self, router.db_for_write(self.model))
        if seq == _UNAVAILABLE:
            return fields
        for obj in objs:
            setattr(obj, SEQ_FIELD, seq)
        return fields if SEQ_FIELD in fields else [*fields, SEQ_FIELD]


_UNAVAILABLE = -1


_vendors: dict[str, tuple[Any, str]] = {}


def _take_seq(cache: WriteBehindRowCache, using: str) -> int:
    """
    Draw the sequence of a bulk write, kept for the invalidation that follows it. With
    Redis unreachable the write keeps the rows' sequences and is fenced for the next flush.
    """
    try:
        seq = cache.next_seq(using)
    except CacheUnavailable:
        seq = _UNAVAILABLE
    taken = getattr(_local, "seqs", None) or {}
    taken[cache.label] = seq
    _local.seqs = taken
    return seq


def _taken_seq(cache: WriteBehindRowCache) -> int | None:
    taken: dict[str, int] = getattr(_local, "seqs", None) or {}
    return taken.pop(cache.label, None)


def _missing(model: type[Model]) -> Any:
    return model.DoesNotExist  # type: ignore[attr-defined]
