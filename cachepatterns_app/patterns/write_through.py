"""
Write-through for model rows: reads as cache-aside; a committed ``save()`` puts the
fresh row into Redis, so the next read is a hit with the new value.

Two writers can commit in one order and reach Redis in the other. Every row
therefore carries an integer version that the database increments atomically on
every write path (``save()`` sends ``version = version + 1``; ``update()`` and
``bulk_update()`` too), and the put is a check-and-set in one Lua call that never
replaces a newer version. A delete leaves a tombstone so a late put cannot bring
the row back.

Knowing the version a save produced costs nothing on MySQL/MariaDB: the update
sets it through ``LAST_INSERT_ID(version + 1)``, which the server returns in the
same reply. Elsewhere the row is read back: inside a transaction only its version
(the row is locked until commit), in autocommit the whole row after commit.
"""

from __future__ import annotations

import datetime
import decimal
import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import DatabaseError, connections, models
from django.db.models import Expression, F, Field, Model
from django.db.models.fields import NOT_PROVIDED
from django.utils import timezone

from cachepatterns_app import stats
from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError
from cachepatterns_app.invalidation import Command, queue_for_retry, send
from cachepatterns_app.keys import RowKeys
from cachepatterns_app.leases import UNSET, companion_ttl_ms, ttl_ms
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.store import SCRIPTS

__all__ = ["WriteThroughRowCache"]

logger = logging.getLogger(__name__)

_STATE = "_cachepatterns_wt"


class _NextVersion(Expression):
    """
    ``LAST_INSERT_ID(<version> + 1)``: increments the column, and makes MySQL return
    the new value in the statement's reply (as the last insert id).

    Written as one fixed fragment: composing ``Func(F() + 1)`` costs more to resolve
    than the rest of the UPDATE's compilation.
    """

    contains_aggregate = False
    contains_over_clause = False
    # It reads the column: Django must refuse it in an INSERT (a save() of a row that
    # was deleted meanwhile), as it refuses F() there.
    contains_column_references = True

    def __init__(self, column: str, output_field: Field[Any, Any]) -> None:
        super().__init__(output_field=output_field)
        self.column = column

    def resolve_expression(self, *args: Any, **kwargs: Any) -> _NextVersion:
        return self

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[str | int, ...]]:
        column = connection.ops.quote_name(self.column)
        return f"LAST_INSERT_ID({column} + 1)", ()


class WriteThroughRowCache(RowCache):
    """Row cache whose saves put the fresh row, ordered by a version field."""

    def __init__(
        self, model: type[Model], *, ttl: int | None = UNSET, version_field: str = "version"
    ) -> None:
        super().__init__(model, ttl=ttl)
        self.version_name = version_field

    @cached_property
    def version(self) -> Field[Any, Any]:
        try:
            field = self.model._meta.get_field(self.version_name)
        except FieldDoesNotExist as e:
            raise ConfigurationError(
                f"{self.label} uses WriteThroughManager(version_field={self.version_name!r}) "
                f"but has no such field. Add `{self.version_name} = "
                "models.PositiveBigIntegerField(default=0)` and make a migration."
            ) from e
        return field  # type: ignore[return-value]

    @cached_property
    def _memory_is_the_row(self) -> bool:
        # With database-computed columns, what save() sent is not all the row holds.
        return not any(
            isinstance(f, models.GeneratedField) or getattr(f, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
            for f in self.model._meta.concrete_fields
        )

    # -- versions ----------------------------------------------------------------

    def _tombstone_ms(self) -> int:
        # As long as a cached value could have lived: a resurrected row could not
        # outlive that either. A primary key that is reused (natural keys) stays
        # uncached for this long after its delete.
        return int((self.ttl or 86400) * 1000)

    def put_command(self, keys: RowKeys, version: int, payload: bytes, token: str = "") -> Command:
        """Return the check-and-set that stores ``payload`` unless a newer version is cached."""
        ttl = ttl_ms(self.ttl)
        return (
            "SCRIPT",
            "put_versioned",
            (keys.value, keys.lease, keys.version),
            (version, payload, ttl, companion_ttl_ms(ttl), token),
        )

    def fill_command(self, keys: RowKeys, token: str, instance: Model, payload: bytes) -> tuple[Any, ...]:
        # The same check-and-set, as a reader's fill (holding a lease), sent without a reply.
        version = getattr(instance, self.version.attname) or 0
        _, name, script_keys, args = self.put_command(keys, version, payload, token)
        return ("EVAL", SCRIPTS[name], len(script_keys), *script_keys, *args)

    def deletion(self, pks: Any, using: str) -> list[tuple[Command, str]]:
        out: list[tuple[Command, str]] = []
        for keys in self.write_keys(pks, using):
            out.append(
                (
                    ("SCRIPT", "tombstone", (keys.value, keys.lease, keys.version), (self._tombstone_ms(),)),
                    self.label,
                )
            )
        return out

    # -- save() --------------------------------------------------------------------

    def before_save(self, instance: Model, using: str, update_fields: Any = None) -> None:
        field = self.version
        if instance._state.adding:
            if getattr(instance, field.attname) is None:
                setattr(instance, field.attname, 0)
            instance.__dict__[_STATE] = _SaveState("insert")
            return
        if update_fields is not None and not {field.name, field.attname} & set(update_fields):
            # save(update_fields=...) will not write the version: bump it separately.
            instance.__dict__[_STATE] = _SaveState("bump")
            return
        connection = connections[using]
        state = _SaveState("increment")
        if connection.vendor == "mysql":
            # A save that raised never reached post_save: drop its wrapper first.
            connection.execute_wrappers[:] = [
                w for w in connection.execute_wrappers if not isinstance(w, _VersionCapture)
            ]
            state.capture = _VersionCapture(self.model._meta.db_table)
            connection.execute_wrappers.append(state.capture)
            setattr(instance, field.attname, _NextVersion(field.column or field.attname, field))
        else:
            setattr(instance, field.attname, F(field.attname) + 1)
        instance.__dict__[_STATE] = state

    def saved(
        self, instance: Model, using: str, update_fields: Any = None
    ) -> tuple[list[tuple[Command, str]], Any]:
        state: _SaveState = instance.__dict__.pop(_STATE, None) or _SaveState("increment")
        connection = connections[using]
        if state.capture is not None and state.capture in connection.execute_wrappers:
            connection.execute_wrappers.remove(state.capture)
        field = self.version
        pk = instance.pk

        def query() -> models.QuerySet[Any, Any]:
            return models.QuerySet(self.model, using=using).filter(pk=pk)

        version: Any = getattr(instance, field.attname)
        if state.mode == "bump":
            query().update(**{field.attname: F(field.attname) + 1})
            version = None
        elif state.capture is not None and state.capture.version is not None:
            version = state.capture.version
        elif hasattr(version, "resolve_expression"):
            version = None
        if version is None and connection.in_atomic_block:
            # The row is locked by this transaction until commit: its version is ours.
            version = query().values_list(field.attname, flat=True).get()
        if version is not None:
            setattr(instance, field.attname, version)
        full_save = update_fields is None and not self.codec.deferred(instance)
        if version is not None and full_save and self._memory_is_the_row:
            canonical = _canonical(instance, self.model)
            if canonical is None:
                return [], lambda: self._reread_and_put([pk], using)
            payload = self.encode(canonical)
            if payload is None:
                # The new row cannot be cached (too large, unencodable): drop the old one.
                return self.invalidation([pk], using), None
            keys = self.keys(pk, using)
            command = self.put_command(keys, int(version), payload)
            return [], lambda: self._put([(keys, command)])
        return [], lambda: self._reread_and_put([pk], using, instance if version is None else None)

    def bulk_written(self, pks: Sequence[Any], using: str) -> Any:
        """
        After commit of ``update()``/``bulk_update()``/``bulk_create()``: put the rows as
        they now are. Deleting their keys alone is not enough: the version key would
        keep the older version, and a put from an earlier save still on its way would
        then be accepted.
        """
        pks = list(pks)
        return (lambda: self._reread_and_put(pks, using)) if pks else None

    def _reread_and_put(self, pks: Sequence[Any], using: str, instance: Model | None = None) -> None:
        """After commit: read the rows (each with its version) and put them."""
        pks = list(pks)
        for start in range(0, len(pks), 1000):
            chunk = pks[start : start + 1000]
            try:
                self._reread_chunk(chunk, using, instance)
            except DatabaseError as e:
                # Without the fresh rows, at least do not leave the old ones cached.
                logger.error("Write-through could not re-read %d row(s) (%s); invalidating", len(chunk), e)
                send(dict(self.invalidation(chunk, using)))

    def _reread_chunk(self, pks: Sequence[Any], using: str, instance: Model | None) -> None:
        rows: models.QuerySet[Any, Any] = models.QuerySet(self.model, using=using).filter(pk__in=pks)
        puts = []
        unstorable = []
        for row in rows:
            if instance is not None and row.pk == instance.pk:
                # Tell the saved instance which version it now has (it held an expression).
                setattr(instance, self.version.attname, getattr(row, self.version.attname))
            payload = self.encode(row)
            if payload is None:
                unstorable.append(row.pk)
                continue
            keys = self.keys(row.pk, using)
            puts.append((keys, self.put_command(keys, int(getattr(row, self.version.attname) or 0), payload)))
        if unstorable:
            send(dict(self.invalidation(unstorable, using)))
        self._put(puts)

    def _put(self, puts: list[tuple[RowKeys, Command]]) -> None:
        from cachepatterns_app.store import get_store

        if not puts:
            return
        try:
            replies = get_store().pipeline(command for _, command in puts)
        except CacheUnavailable as e:
            logger.error("Write-through put failed (%s); the keys will be invalidated on recovery", e)
            queue_for_retry({("DEL", keys.value, keys.lease): self.label for keys, _ in puts})
            return
        stored = sum(1 for reply in replies if reply == 1)
        if stored:
            stats.record("put", self.label, stored)
        if stored < len(puts):
            # A newer version (or a tombstone) was already there: the right outcome.
            stats.record("stale_refused", self.label, len(puts) - stored)

    # -- bulk paths ----------------------------------------------------------------

    def after_upsert(self, queryset: models.QuerySet[Any, Any]) -> None:
        """``bulk_create(update_conflicts=True)`` rewrote these rows: give them new versions."""
        field = self.version
        queryset.update(**{field.attname: F(field.attname) + 1})

    def update_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        field = self.version
        if field.name in kwargs or field.attname in kwargs:
            return kwargs
        return {**kwargs, field.attname: F(field.attname) + 1}

    def before_bulk_update(self, objs: Sequence[Model], fields: list[str]) -> list[str]:
        field = self.version
        for obj in objs:
            setattr(obj, field.attname, F(field.attname) + 1)
        return fields if field.name in fields or field.attname in fields else [*fields, field.name]

    def after_bulk_update(self, objs: Sequence[Model], using: str) -> None:
        field = self.version
        versions = dict(
            models.QuerySet(self.model, using=using)
            .filter(pk__in=[obj.pk for obj in objs])
            .values_list("pk", field.attname)
        )
        for obj in objs:
            setattr(obj, field.attname, versions.get(obj.pk))


class _SaveState:
    """What ``before_save`` arranged, for ``saved`` to finish."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.capture: _VersionCapture | None = None


class _VersionCapture:
    """An execute wrapper that reads the version ``LAST_INSERT_ID(…)`` produced."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.version: int | None = None

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        result = execute(sql, params, many, context)
        if (
            self.version is None
            and sql.startswith("UPDATE")
            and self.table in sql
            and "LAST_INSERT_ID" in sql
        ):
            cursor = context["cursor"]
            if cursor.rowcount:
                self.version = int(cursor.lastrowid)
        return result


def _canonical(instance: Model, model: type[Model]) -> Model | None:
    """
    Return ``instance`` with its values as the database will return them (``"7"``
    in an integer field is 7, a naive datetime is made aware, a Decimal has the
    field's places), or None if a value cannot be converted.
    """
    changed: dict[str, Any] = {}
    for field in model._meta.concrete_fields:
        value = instance.__dict__.get(field.attname)
        if value is None or isinstance(field, models.JSONField | models.FileField | models.BinaryField):
            continue
        try:
            new = field.to_python(value)
            if isinstance(field, models.DateTimeField) and isinstance(new, datetime.datetime):
                if django_settings.USE_TZ:
                    if timezone.is_naive(new):
                        # What Django does when saving a naive datetime with USE_TZ.
                        new = timezone.make_aware(new, timezone.get_default_timezone())
                    new = new.astimezone(datetime.UTC)
            elif isinstance(field, models.DecimalField) and isinstance(new, decimal.Decimal):
                new = new.quantize(decimal.Decimal(1).scaleb(-(field.decimal_places or 0)))
        except (ValidationError, decimal.InvalidOperation, TypeError, ValueError):
            return None
        if new is not value:
            changed[field.attname] = new
    if not changed:
        return instance
    clone = model.__new__(model)
    clone.__dict__.update(instance.__dict__)
    clone.__dict__.update(changed)
    return clone
