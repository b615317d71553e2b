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
import logging
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any, cast

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import models, router
from django.db.models import Field, Model

from cachepatterns_app import stats
from cachepatterns_app.codecs import RowCodec, row_codec
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CacheUnavailable, SerializationError
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

    def keys(self, pk: Any) -> RowKeys:
        """Return the keys of row ``pk`` (``"7"`` and ``7`` name the same row)."""
        return row_keys(self.label, self.pk_field.to_python(pk))

    # -- reads -----------------------------------------------------------------------

    def get(self, pk: Any, read_db: str) -> Model:
        """Return row ``pk``, raising ``DoesNotExist`` like ``QuerySet.get``."""
        try:
            pk = self.pk_field.to_python(pk)
        except ValidationError:
            return self._query(read_db).get(pk=pk)  # let the ORM raise its usual error
        keys = row_keys(self.label, pk)  # pk is already typed: skip keys()'s to_python
        token = new_token()
        lease_ms = lease_lifetime_ms()
        store = self._store()
        corrupt = 0
        while True:
            try:
                reply = await_turn(
                    lambda: store.script("read", (keys.value, keys.lease), (token, lease_ms)), self.label
                )
            except CacheUnavailable as e:
                return self._degraded(e, read_db, pk)
            if reply is None:
                stats.record("bypass", self.label)
                return self._query(read_db).get(pk=pk)
            if reply[0] == LEASED:
                return self._load_and_fill(keys, token, pk, read_db)
            try:
                instance = self.decode(reply[1], read_db)
            except SerializationError as e:
                self._discard(keys.value, e)
                corrupt += 1
                if corrupt > 1:  # the delete did not land: do not spin on the same payload
                    return self._query(read_db).get(pk=pk)
                continue
            stats.record("hit", self.label)
            return instance

    def get_by_unique(self, field_name: str, value: Any, read_db: str) -> Model:
        """Return the row whose unique field ``field_name`` equals ``value``."""
        field = self.unique_fields[field_name]
        try:
            value = field.to_python(value.pk if isinstance(value, Model) else value)
        except ValidationError:
            return self._query(read_db).get(**{field_name: value})
        lookup = {field.attname: value}
        pointer = unique_key(self.label, field.attname, value)
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
        if reply[0] == HIT:
            # The pointer is only a hint: the row it names must still have this value.
            try:
                instance: Model | None = self.get(self.pk_field.to_python(_json.loads(reply[1])), read_db)
            except (SerializationError, ValidationError, ObjectDoesNotExist):
                instance = None
            if instance is not None and getattr(instance, field.attname) == value:
                return instance
            store.send_no_reply([("DEL", pointer)])
            return self._query(read_db).get(**lookup)
        fill_db = router.db_for_write(self.model)
        try:
            pk = self._query(fill_db).filter(**lookup).values_list("pk", flat=True).get()
            instance = self.get(pk, read_db)
        except BaseException:
            self._release_leases([lease], token)
            raise
        if getattr(instance, field.attname) != value or not fill_allowed(fill_db):
            # The row changed between the two reads, or the database matched a variant
            # (a case-insensitive collation): do not point this spelling at the row.
            self._release_leases([lease], token)
            if getattr(instance, field.attname) != value:
                return self._query(read_db).get(**lookup)
            return instance
        payload = _json.dumps(self.pk_field.value_to_string(cast(Any, _PkHolder(self.pk_field, pk))))
        store.send_no_reply([("EVAL", SCRIPTS["fill"], 2, pointer, lease, token, payload, ttl_ms(self.ttl))])
        return instance

    def get_many(self, pks: Iterable[Any], read_db: str) -> dict[Any, Model]:
        """Return ``{pk: instance}`` for the rows that exist: one MGET for the hits."""
        wanted: dict[Any, RowKeys] = {}
        for pk in pks:
            typed = self.pk_field.to_python(pk)
            if typed not in wanted:
                wanted[typed] = self.keys(typed)
        if not wanted:
            return {}
        store = self._store()
        found: dict[Any, Model] = {}
        try:
            values = store.mget([k.value for k in wanted.values()])
        except CacheUnavailable as e:
            stats.record("degraded", self.label, len(wanted))
            self._raise_unless_degrading(e)
            return self._query(read_db).in_bulk(list(wanted))
        missing: list[Any] = []
        for (pk, keys), raw in zip(wanted.items(), values, strict=True):
            if raw is None:
                missing.append(pk)
                continue
            try:
                found[pk] = self.decode(raw, read_db)
            except SerializationError as e:
                self._discard(keys.value, e)
                missing.append(pk)
        if found:
            stats.record("hit", self.label, len(found))
        if missing:
            found.update(self._load_many(missing, wanted, read_db))
        return {pk: found[pk] for pk in wanted if pk in found}

    def _load_many(self, missing: Sequence[Any], keys: dict[Any, RowKeys], read_db: str) -> dict[Any, Model]:
        store = self._store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        fill_db = router.db_for_write(self.model)
        leased: set[Any] = set()
        if fill_allowed(fill_db):
            try:
                replies = store.pipeline(
                    ("SET", keys[pk].lease, token, "NX", "PX", lease_ms) for pk in missing
                )
                leased = {pk for pk, ok in zip(missing, replies, strict=True) if ok}
            except CacheUnavailable as e:
                self._raise_unless_degrading(e)
        stats.record("miss", self.label, len(missing))
        try:
            loaded = self._query(fill_db).in_bulk(list(missing))
        except BaseException:
            self._release_many([keys[pk] for pk in leased], token)
            raise
        fills = []
        for pk in leased:
            instance = loaded.get(pk)
            if instance is None:
                continue
            payload = self.encode(instance)
            if payload is not None:
                fills.append(self.fill_command(keys[pk], token, instance, payload))
        self._release_many([keys[pk] for pk in leased if pk not in loaded], token)
        if fills:
            store.send_no_reply(fills)
            stats.record("fill", self.label, len(fills))
        for instance in loaded.values():
            instance._state.db = read_db
        return loaded

    # -- the miss path ---------------------------------------------------------------

    def _load_and_fill(self, keys: RowKeys, token: str, pk: Any, read_db: str) -> Model:
        fill_db = router.db_for_write(self.model)
        stats.record("miss", self.label)
        if not fill_allowed(fill_db):
            self._release(keys, token)
            stats.record("bypass", self.label)
            return self._query(read_db).get(pk=pk)
        try:
            instance = self._query(fill_db).get(pk=pk)
        except BaseException:
            self._release(keys, token)
            raise
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

    def _discard(self, key: str, error: Exception) -> None:
        logger.warning("Discarding unreadable cache entry %s: %s", key, error)
        stats.record("corrupt", self.label)
        self._store().send_no_reply([("DEL", key)])

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

    def invalidation(self, pks: Iterable[Any]) -> list[tuple[tuple[Any, ...], str]]:
        """Return the commands that drop rows ``pks`` and void their in-flight fills."""
        out = []
        for pk in pks:
            keys = self.keys(pk)
            out.append((("DEL", keys.value, keys.lease), self.label))
        return out

    def deletion(self, pks: Iterable[Any]) -> list[tuple[tuple[Any, ...], str]]:
        """Return the commands for rows ``pks`` that were deleted."""
        return self.invalidation(pks)

    def before_save(self, instance: Model, using: str, update_fields: Any = None) -> None:
        """Hook run on ``pre_save`` (write-through bumps the version here)."""

    def saved(
        self, instance: Model, using: str, update_fields: Any = None
    ) -> tuple[list[tuple[tuple[Any, ...], str]], Any]:
        """Return the after-commit (commands, callback) for a saved instance."""
        return self.invalidation([instance.pk]), None

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


class _PkHolder:
    def __init__(self, field: Any, value: Any) -> None:
        setattr(self, field.attname, value)
