"""
Cache-aside for model rows: read from Redis, on a miss load from the database and
fill; every write invalidates after commit.

The read is one Lua call that returns the value, or grants this caller the fill
*lease* (a token in a side key), or says another caller holds it. Only the lease
holder loads; the others wait for its fill (single flight). The fill is stored
only if the lease is still the holder's, and every invalidation deletes the
lease: a reader that loaded a row before a concurrent write committed can never
leave that old row cached.
"""

from __future__ import annotations

import copy
import decimal
import logging
import time
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import models
from django.db.models import Field, Model

from cachepatterns_app import stats
from cachepatterns_app.codecs import RowCodec, row_codec
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CacheUnavailable, SerializationError
from cachepatterns_app.identity import (
    NotCanonical,
    canonical,
    custom_field,
    database_identity,
    text_is_exact,
    value_field,
)
from cachepatterns_app.keys import RowKeys, model_label, row_keys, unique_key
from cachepatterns_app.leases import (
    HIT,
    LEASED,
    UNSET,
    await_turn,
    fill_allowed,
    lease_lifetime_ms,
    ttl_ms,
)
from cachepatterns_app.serializers import JSONSerializer, get_serializer
from cachepatterns_app.store import SCRIPTS, Store, get_store, new_token

__all__ = ["RowCache"]

logger = logging.getLogger(__name__)

# Unique-field pointers hold a primary key: always JSON, whatever SERIALIZER says.
_json = JSONSerializer()


class RowCache:
    """Read model rows through Redis. Subclasses change how fills and writes store."""

    def __init__(self, model: type[Model], *, ttl: int | None = UNSET) -> None:
        # Managers build this while Django is still building the model class, so
        # everything derived from the model's fields is computed on first use.
        self.model = model
        self._ttl = ttl
        self._exact: dict[str, bool] = {}

    def bind(self, model: type[Model]) -> RowCache:
        """Return this row cache serving ``model`` (a proxy of this one's model)."""
        clone = copy.copy(self)
        clone.model = model
        clone.__dict__.pop("codec", None)
        return clone

    @cached_property
    def codec(self) -> RowCodec:
        return row_codec(self.model)

    @cached_property
    def label(self) -> str:
        return model_label(self.model)

    @cached_property
    def pk_field(self) -> Field[Any, Any]:
        return self.model._meta.pk

    @cached_property
    def pk_attname(self) -> str:
        return str(self.model._meta.pk.attname)

    @cached_property
    def unique_fields(self) -> dict[str, Field[Any, Any]]:
        return {
            name: field
            for field in self.model._meta.concrete_fields
            if field.unique and not field.primary_key
            for name in {field.name, field.attname}
        }

    # -- configuration -------------------------------------------------------------

    @property
    def ttl(self) -> int | None:
        """Return the TTL in seconds (None: no expiry)."""
        return get_settings().DEFAULT_TTL if self._ttl is UNSET else self._ttl

    def _store(self) -> Store:
        return get_store()

    # -- identity --------------------------------------------------------------------

    def canonical_pk(self, pk: Any) -> Any:
        """Return ``pk`` as the database returns it; raise ``NotCanonical`` if unknowable."""
        if type(pk) is int and self._integer_pk:
            return pk  # the hit path's common case: already canonical
        return canonical(self.pk_field, pk)

    @cached_property
    def _integer_pk(self) -> bool:
        field = value_field(self.pk_field)
        return isinstance(field, models.IntegerField | models.AutoField) and not custom_field(field)

    def pk_is_exact(self, using: str) -> bool:
        """Return whether database ``using`` compares this model's primary keys exactly."""
        exact = self._exact.get(using)
        if exact is None:
            exact = self._exact[using] = text_is_exact(self.pk_field, using) and not isinstance(
                value_field(self.pk_field), models.DecimalField
            )
        return exact

    def keys(self, pk: Any, using: str) -> RowKeys:
        """Return the keys of row ``pk`` of database ``using`` (``"7"`` and ``7`` name one row)."""
        return row_keys(self.label, database_identity(using), self.canonical_pk(pk))

    # -- reads -----------------------------------------------------------------------

    def get(self, pk: Any, read_db: str, cache_db: str) -> Model:
        """
        Return row ``pk``, raising ``DoesNotExist`` like ``QuerySet.get``. The cache of
        ``cache_db`` (the model's write database) serves it; misses read ``cache_db``.
        """
        try:
            pk = self.canonical_pk(pk)
        except NotCanonical:
            stats.record("bypass", self.label)
            return self._query(read_db).get(pk=pk)  # let the ORM answer (or raise) as usual
        keys = row_keys(self.label, database_identity(cache_db), pk)
        token = new_token()
        lease_ms = lease_lifetime_ms()
        store = self._store()
        corrupt = 0
        while True:
            try:
                reply = await_turn(
                    lambda: self.read_reply(store, pk, keys, token, lease_ms, cache_db), self.label
                )
            except CacheUnavailable as e:
                return self._degraded(e, read_db, pk)
            if reply is None:
                stats.record("bypass", self.label)
                return self._query(read_db).get(pk=pk)
            if reply[0] == LEASED:
                self._healed(keys.value, reply)
                return self._load_and_fill(keys, token, pk, read_db, cache_db)
            try:
                instance = self.decode(reply[1], read_db)
                if instance.__dict__[self.pk_attname] != pk:
                    raise SerializationError(f"the payload under {keys.value} is another row")
            except SerializationError as e:
                corrupt += 1
                if not self._discard(keys.value, e) or corrupt > 1:
                    return self._query(read_db).get(pk=pk)
                continue
            stats.record("hit", self.label)
            self.served(pk, keys, reply, cache_db)
            return instance

    def read_reply(
        self, store: Store, pk: Any, keys: RowKeys, token: str, lease_ms: int, cache_db: str
    ) -> list[Any]:
        """Return ``read.lua``'s answer for row ``pk`` (a hit, the lease, or busy)."""
        reply: list[Any] = store.script("read", (keys.value, keys.lease), (token, lease_ms))
        return reply

    def served(self, pk: Any, keys: RowKeys, reply: list[Any], cache_db: str) -> None:
        """Hook run after a hit of row ``pk`` was served (refresh-ahead schedules here)."""

    def get_by_unique(self, field_name: str, value: Any, read_db: str, cache_db: str) -> Model:
        """
        Return the row whose unique field ``field_name`` equals ``value``.

        A pointer key maps the value *as asked* to the row's pk and to the exact value
        the database returned for it. A hit is only used if the row still holds that
        exact value: the database said the two match (under whatever collation the
        column has), the column is unique, and equality under a collation depends on
        the two strings alone — so the row is still the one the database would return.
        """
        field = self.unique_fields[field_name]
        try:
            value = canonical(field, value.pk if isinstance(value, Model) else value)
        except NotCanonical:
            stats.record("bypass", self.label)
            return self._query(read_db).get(**{field_name: value})
        lookup = {field.attname: value}
        pointer = unique_key(self.label, database_identity(cache_db), field.attname, value)
        lease = pointer + ":l"
        store = self._store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        try:
            reply = await_turn(lambda: store.script("read", (pointer, lease), (token, lease_ms)), self.label)
        except CacheUnavailable as e:
            stats.record("degraded", self.label)
            self._raise_unless_degrading(e)
            return self._query(read_db).get(**lookup)
        if reply is None:
            stats.record("bypass", self.label)
            return self._query(read_db).get(**lookup)
        attname = str(field.attname)
        if reply[0] == HIT:
            target = self._pointer_target(reply[1])
            instance: Model | None = None
            if target is not None:
                try:
                    instance = self.get(target[0], read_db, cache_db)
                except ObjectDoesNotExist:
                    instance = None
            if instance is not None and self._plain(attname, instance) == target[1]:  # type: ignore[index]
                return instance
            self._drop(pointer)
            return self._query(read_db).get(**lookup)
        self._healed(pointer, reply)
        try:
            pk, stored = self._query(cache_db).filter(**lookup).values_list("pk", attname).get()
            instance = self.get(pk, read_db, cache_db)
        except BaseException:
            self._release_leases([lease], token)
            raise
        exact = self.codec.encode_field(attname, stored)
        if self._plain(attname, instance) != exact:
            # The row changed between the two reads: answer as the database does now.
            self._release_leases([lease], token)
            return self._query(read_db).get(**lookup)
        if not fill_allowed(cache_db):
            self._release_leases([lease], token)
            return instance
        payload = _json.dumps([self.codec.encode_field(self.pk_attname, instance.pk), exact])
        store.send_no_reply([("EVAL", SCRIPTS["fill"], 2, pointer, lease, token, payload, ttl_ms(self.ttl))])
        return instance

    def _plain(self, attname: str, instance: Model) -> Any:
        return self.codec.encode_field(attname, instance.__dict__.get(attname))

    def _pointer_target(self, payload: bytes) -> tuple[Any, Any] | None:
        """Return (pk, exact value) from a pointer, or None if it is not one of ours."""
        try:
            target = _json.loads(payload)
            if not isinstance(target, list) or len(target) != 2:
                raise SerializationError("not a [pk, value] pair")
            return self.canonical_pk(self.codec.decode_field(self.pk_attname, target[0])), target[1]
        except (SerializationError, ValidationError, TypeError, ValueError, decimal.InvalidOperation) as e:
            logger.warning("Discarding unreadable unique-field pointer of %s: %s", self.label, e)
            stats.record("corrupt", self.label)
            return None

    def get_many(self, pks: Iterable[Any], read_db: str, cache_db: str) -> dict[Any, Model]:
        """
        Return what ``in_bulk(pks)`` returns — ``{pk: instance}`` for the rows that
        exist, keyed by the primary key as the database returned it — with one MGET
        for the hits and one ``SELECT … IN`` for the misses.
        """
        ident = database_identity(cache_db)
        wanted: dict[Any, RowKeys] = {}
        unkeyable: list[Any] = []
        for pk in pks:
            try:
                typed = self.canonical_pk(pk)
            except NotCanonical:
                unkeyable.append(pk)
                continue
            if typed not in wanted:
                wanted[typed] = row_keys(self.label, ident, typed)
        found: dict[Any, Model] = {}
        if unkeyable:
            stats.record("bypass", self.label, len(unkeyable))
            found.update(self._query(read_db).in_bulk(unkeyable))
        if not wanted:
            return found
        store = self._store()
        try:
            values = store.mget([k.value for k in wanted.values()])
        except CacheUnavailable as e:
            stats.record("degraded", self.label, len(wanted))
            self._raise_unless_degrading(e)
            found.update(self._query(read_db).in_bulk(list(wanted)))
            return found
        hits: dict[Any, Model] = {}
        missing: list[Any] = []
        for (pk, keys), raw in zip(wanted.items(), values, strict=True):
            if raw is None:
                missing.append(pk)
                continue
            try:
                instance = self.decode(raw, read_db)
                if instance.__dict__[self.pk_attname] != pk:
                    raise SerializationError(f"the payload under {keys.value} is another row")
            except SerializationError as e:
                self._discard(keys.value, e)
                missing.append(pk)
                continue
            hits[pk] = instance
        if hits:
            stats.record("hit", self.label, len(hits))
        loaded = self._load_many(missing, wanted, read_db, cache_db) if missing else {}
        out: dict[Any, Model] = {}
        for pk in wanted:
            row = hits.get(pk) or loaded.pop(pk, None)
            if row is not None:
                out[pk] = row
        out.update(loaded)  # rows the database matched under another spelling
        out.update(found)
        return out

    def _load_many(
        self, missing: Sequence[Any], keys: dict[Any, RowKeys], read_db: str, cache_db: str
    ) -> dict[Any, Model]:
        store = self._store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        leased: set[Any] = set()
        if fill_allowed(cache_db):
            try:
                replies = store.pipeline(
                    ("SET", keys[pk].lease, token, "NX", "PX", lease_ms) for pk in missing
                )
                leased = {pk for pk, ok in zip(missing, replies, strict=True) if ok}
            except CacheUnavailable as e:
                self._raise_unless_degrading(e)
        stats.record("miss", self.label, len(missing))
        started = time.perf_counter()
        try:
            loaded = self._query(cache_db).in_bulk(list(missing))
        except BaseException:
            self._release_many([keys[pk] for pk in leased], token)
            raise
        stats.observe("db_load", self.label, time.perf_counter() - started)
        fills = []
        filled: set[Any] = set()
        for pk, instance in loaded.items():
            # Only under the key of the primary key as the database returned it.
            if pk in leased and keys[pk].value == self.keys(instance.pk, cache_db).value:
                payload = self.encode(instance)
                if payload is not None:
                    fills.append(self.fill_command(keys[pk], token, instance, payload))
                    filled.add(pk)
        self._release_many([keys[pk] for pk in leased if pk not in filled], token)
        if fills:
            store.send_no_reply(fills)
            stats.record("fill", self.label, len(fills))
        for instance in loaded.values():
            instance._state.db = read_db
        return loaded

    # -- the miss path ---------------------------------------------------------------

    def _load_and_fill(self, keys: RowKeys, token: str, pk: Any, read_db: str, cache_db: str) -> Model:
        stats.record("miss", self.label)
        if not fill_allowed(cache_db):
            self._release(keys, token)
            stats.record("bypass", self.label)
            return self._query(read_db).get(pk=pk)
        started = time.perf_counter()
        try:
            instance = self._query(cache_db).get(pk=pk)
        except BaseException:
            self._release(keys, token)
            raise
        stats.observe("db_load", self.label, time.perf_counter() - started)
        if type(pk) is not int and self.keys(instance.pk, cache_db).value != keys.value:
            # The database matched another spelling of the key (a case- or accent-
            # insensitive collation): a write of the row would never reach this key.
            self._release(keys, token)
            stats.record("bypass", self.label)
        else:
            payload = self.encode(instance)
            if payload is None:
                self._release(keys, token)
            else:
                self._store().send_no_reply([self.fill_command(keys, token, instance, payload)])
                stats.record("fill", self.label)
        instance._state.db = read_db
        return instance

    def fill_command(self, keys: RowKeys, token: str, instance: Model, payload: bytes) -> tuple[Any, ...]:
        """Return the command that stores a loaded row if the lease still holds."""
        return ("EVAL", SCRIPTS["fill"], 2, keys.value, keys.lease, token, payload, ttl_ms(self.ttl))

    def _release(self, keys: RowKeys, token: str) -> None:
        self._release_many([keys], token)

    def _release_many(self, keys: Sequence[RowKeys], token: str) -> None:
        self._release_leases([k.lease for k in keys], token)

    def _release_leases(self, leases: Sequence[str], token: str) -> None:
        if leases:
            self._store().send_no_reply([("EVAL", SCRIPTS["release"], 1, lease, token) for lease in leases])

    # -- encoding --------------------------------------------------------------------

    def encode(self, instance: Model) -> bytes | None:
        """Return the payload of ``instance``, or None (counted) if it cannot be cached."""
        settings = get_settings()
        try:
            payload = get_serializer(settings.SERIALIZER).dumps(self.codec.encode(instance))
        except SerializationError as e:
            logger.warning("Not caching %s pk=%r: %s", self.label, instance.pk, e)
            stats.record("error", self.label)
            return None
        limit = settings.MAX_VALUE_BYTES
        if limit and len(payload) > limit:
            logger.warning(
                "Not caching %s pk=%r: %d bytes is over MAX_VALUE_BYTES (%d)",
                self.label,
                instance.pk,
                len(payload),
                limit,
            )
            stats.record("too_large", self.label)
            return None
        return payload

    def decode(self, payload: bytes, read_db: str) -> Model:
        """Return the instance in ``payload``; raise ``SerializationError`` if unreadable."""
        return self.codec.decode(get_serializer(get_settings().SERIALIZER).loads(payload), read_db)

    def _discard(self, key: str, error: Exception) -> bool:
        """Delete an entry that is not what it should be; return whether the delete landed."""
        logger.warning("Discarding unreadable cache entry %s: %s", key, error)
        stats.record("corrupt", self.label)
        return self._drop(key)

    def _drop(self, key: str) -> bool:
        # Waits for the reply: the caller reads the key again next, and must not race
        # ahead of the delete on another pooled connection.
        try:
            self._store().execute("DEL", key)
        except CacheUnavailable:
            return False
        return True

    def _healed(self, key: str, reply: list[Any]) -> None:
        """Log and count what the read script repaired (a key of the wrong type, an immortal lease)."""
        flags = int(reply[-1]) if len(reply) > 1 else 0
        if flags:
            what = [
                name
                for bit, name in (
                    (1, "value of another type"),
                    (2, "lease without expiry"),
                    (4, "malformed generation"),
                )
                if flags & bit
            ]
            logger.warning("Repaired cache entry %s: %s", key, ", ".join(what))
            stats.record("corrupt", self.label)

    # -- failure ---------------------------------------------------------------------

    def _raise_unless_degrading(self, error: CacheUnavailable) -> None:
        if not get_settings().DEGRADE_ON_FAILURE:
            raise error

    def _degraded(self, error: CacheUnavailable, read_db: str, pk: Any) -> Model:
        stats.record("degraded", self.label)
        self._raise_unless_degrading(error)
        return self._query(read_db).get(pk=pk)

    def _query(self, using: str) -> models.QuerySet[Model, Model]:
        # A plain QuerySet: never the model's (possibly cached, possibly filtered) manager.
        return models.QuerySet(self.model, using=using)

    # -- writes ----------------------------------------------------------------------

    def invalidation(self, pks: Iterable[Any], using: str) -> list[tuple[tuple[Any, ...], str]]:
        """Return the commands that drop rows ``pks`` of ``using`` and void their in-flight fills."""
        out = []
        for keys in self.write_keys(pks, using):
            out.append((("DEL", keys.value, keys.lease), self.label))
        return out

    def write_keys(self, pks: Iterable[Any], using: str) -> list[RowKeys]:
        """Return the keys of the written rows ``pks`` (as the database holds them)."""
        out = []
        for pk in pks:
            try:
                out.append(self.keys(pk, using))
            except NotCanonical:
                # Only reachable for a primary key the write path could not resolve
                # (see signals.resolve_pks): no read can have filled it either.
                logger.warning("Not invalidating %s pk=%r: not a value its field can hold", self.label, pk)
        return out

    def deletion(self, pks: Iterable[Any], using: str) -> list[tuple[tuple[Any, ...], str]]:
        """Return the commands for rows ``pks`` of ``using`` that were deleted."""
        return self.invalidation(pks, using)

    def before_save(self, instance: Model, using: str, update_fields: Any = None) -> None:
        """Hook run on ``pre_save`` (write-through bumps the version here)."""

    def saved(
        self, instance: Model, using: str, update_fields: Any = None, pk: Any = None
    ) -> tuple[list[tuple[tuple[Any, ...], str]], Any]:
        """
        Return the after-commit (commands, callback) for a saved instance; ``pk`` is
        its primary key as the database spells it (default: the instance's).
        """
        return self.invalidation([instance.pk if pk is None else pk], using), None

    def ancestor_written(self, ancestor: type[Model], pks: Sequence[Any], using: str) -> Any:
        """
        Hook run inside the transaction when a multi-table ancestor's write changed
        rows ``pks`` of this model; return an after-commit callback (or None).
        """
        return None

    def after_upsert(self, queryset: models.QuerySet[Any, Any]) -> None:
        """Hook run inside the transaction after an upsert rewrote ``queryset``'s rows."""

    def update_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return the keyword arguments ``QuerySet.update()`` should really use."""
        return kwargs

    def before_bulk_update(self, objs: Sequence[Model], fields: list[str]) -> list[str]:
        """Return the fields ``bulk_update()`` should really write."""
        return fields

    def after_bulk_update(self, objs: Sequence[Model], using: str) -> None:
        """Hook run inside the transaction after ``bulk_update()`` wrote ``objs``."""

    def bulk_written(self, pks: Sequence[Any], using: str) -> Any:
        """Return an after-commit callback for a bulk write of ``pks`` (or None)."""
        return None
