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

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import DatabaseError, connections, models
from django.db.models import Expression, F, Field, Model
from django.db.models.fields import NOT_PROVIDED

from cachepatterns_app import stats
from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError
from cachepatterns_app.identity import NotCanonical, canonical, canonical_types, value_field
from cachepatterns_app.invalidation import Command, queue_for_retry, send
from cachepatterns_app.keys import RowKeys
from cachepatterns_app.leases import UNSET, companion_ttl_ms, ttl_ms
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.registry import row_cache_for
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
        # A save that raised before its UPDATE ran never reached post_save: drop its guard.
        connection.execute_wrappers[:] = [
            w for w in connection.execute_wrappers if not isinstance(w, _VersionGuard)
        ]
        original = getattr(instance, field.attname)
        state = _SaveState("increment")
        mysql = connection.vendor == "mysql"
        # PostgreSQL returns the new version in the UPDATE's reply: no read-back.
        column = connection.ops.quote_name(field.column or field.attname)
        returning = column if connection.vendor == "postgresql" else None
        state.guard = _VersionGuard(instance, field, original, mysql, returning)
        connection.execute_wrappers.append(state.guard)
        if mysql:
            setattr(instance, field.attname, _NextVersion(field.column or field.attname, field))
        else:
            setattr(instance, field.attname, F(field.attname) + 1)
        instance.__dict__[_STATE] = state

    def saved(
        self, instance: Model, using: str, update_fields: Any = None, pk: Any = None
    ) -> tuple[list[tuple[Command, str]], Any]:
        state: _SaveState = instance.__dict__.pop(_STATE, None) or _SaveState("increment")
        connection = connections[using]
        guard = state.guard
        if guard is not None and guard in connection.execute_wrappers:
            connection.execute_wrappers.remove(guard)
        field = self.version
        pk = instance.pk if pk is None else pk

        def query() -> models.QuerySet[Any, Any]:
            return models.QuerySet(self.model, using=using).filter(pk=pk)

        # From __dict__, not getattr(): Django 6 defers a field assigned an expression
        # when the backend returns nothing for it (MySQL), and getattr() would load it.
        version: Any = instance.__dict__.get(field.attname)
        if state.mode == "bump":
            query().update(**{field.attname: F(field.attname) + 1})
            version = None
        elif guard is not None and guard.version is not None:
            version = guard.version
        elif guard is not None and guard.django_returns and type(version) is int:
            pass  # what the UPDATE's RETURNING gave Django, which assigned it
        elif guard is not None or hasattr(version, "resolve_expression"):
            version = None  # the database incremented it; only it knows the result
        if version is not None:
            setattr(instance, field.attname, version)
        full_save = update_fields is None and not self.codec.deferred(instance)
        if version is not None and full_save and self._memory_is_the_row:
            stored = self.stored_form(instance, connection)
            if stored is not None:
                payload = self.encode(stored)
                if payload is None:
                    # The new row cannot be cached (too large, unencodable): drop the old one.
                    return self.invalidation([pk], using), None
                keys = self.keys(pk, using)
                command = self.put_command(keys, int(version), payload)
                return [], lambda: self._put([(keys, command)])
        if connection.in_atomic_block:
            # Read the row back now: this transaction holds its lock until commit, so
            # what it reads is exactly what commits, and the put after commit stores it.
            row = query().get()
            setattr(instance, field.attname, getattr(row, field.attname))
            payload = self.encode(row)
            if payload is None:
                return self.invalidation([pk], using), None
            keys = self.keys(pk, using)
            command = self.put_command(keys, int(getattr(row, field.attname) or 0), payload)
            return [], lambda: self._put([(keys, command)])
        # Autocommit: the save has committed already; read it back and put.
        return [], lambda: self._reread_and_put([pk], using, instance)

    def stored_form(self, instance: Model, connection: Any) -> Model | None:
        """
        Return ``instance`` with every value as a fresh ORM read would return it, or
        None where only the database can tell (an expression; a Decimal with more
        places than the column keeps, which backends round differently; a field class
        of the project's own, whose ``get_prep_value`` may normalise; JSON that the
        backend normalises; a column the database computes).
        """
        changed: dict[str, Any] = {}
        data = instance.__dict__
        for field, attname, kind, ready in self._field_kinds:
            value = data.get(attname)
            if value is None or type(value) in ready:
                continue
            if hasattr(value, "resolve_expression") or kind is None:
                return None
            if kind == "json" and not _json_kept_as_text(connection):
                return None
            try:
                new = canonical(field, value) if kind != "json" else value
            except NotCanonical:
                return None
            if kind == "decimal" and len(new.as_tuple().digits) > (getattr(field, "max_digits", 0) or 0):
                return None
            if new is not value:
                changed[attname] = new
        if not changed:
            return instance
        clone = self.model.__new__(self.model)
        clone.__dict__.update(data)
        clone.__dict__.update(changed)
        return clone

    @cached_property
    def _field_kinds(self) -> list[tuple[Field[Any, Any], str, str | None, frozenset[type]]]:
        return [
            (f, f.attname, kind, canonical_types(f) if kind == "plain" else frozenset())
            for f in self.model._meta.concrete_fields
            for kind in [_stored_kind(f)]
        ]

    def ancestor_written(self, ancestor: type[Model], pks: Sequence[Any], using: str) -> Any:
        """
        A multi-table ancestor's write changed columns of these cached rows. Give them
        a new version in the same transaction (unless that write already bumped the
        shared version column), so that no put of an older copy still on its way can
        win, then put the rows as they are after commit.
        """
        field = self.version
        defined_on = field.model._meta.concrete_model if field.model else None
        ancestor_table = ancestor._meta.concrete_model
        lineage = {ancestor_table, *(ancestor_table._meta.get_parent_list() if ancestor_table else ())}
        bumped = defined_on in lineage and isinstance(row_cache_for(ancestor), WriteThroughRowCache)
        if not bumped and defined_on is not None and pks:
            models.QuerySet(defined_on, using=using).filter(pk__in=list(pks)).update(
                **{field.attname: F(field.attname) + 1}
            )
        return self.bulk_written(pks, using)

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
        found: set[str] = set()
        for row in rows:
            keys = self.keys(row.pk, using)
            found.add(keys.value)
            if instance is not None and row.pk == instance.pk:
                # Tell the saved instance which version it now has (it held an expression).
                setattr(instance, self.version.attname, getattr(row, self.version.attname))
            payload = self.encode(row)
            if payload is None:
                unstorable.append(row.pk)
                continue
            puts.append((keys, self.put_command(keys, int(getattr(row, self.version.attname) or 0), payload)))
        if unstorable:
            send(dict(self.invalidation(unstorable, using)))
        # A row this write committed but the read-back no longer finds was deleted in
        # between, and the deleter's tombstone is still on its way: without one of our
        # own, the cached copy from before our write stays readable after save()
        # returns. The tombstone is the deleter's, sent early (idempotent).
        gone = []
        for pk in pks:
            try:
                if self.keys(pk, using).value not in found:
                    gone.append(pk)
            except NotCanonical:
                continue  # no read can have filled a key for it either
        if gone:
            send(dict(self.deletion(gone, using)))
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
        self.guard: _VersionGuard | None = None


class _VersionGuard:
    """
    An execute wrapper around the UPDATE that increments the version. It learns the
    new version where the backend says it (MySQL's ``LAST_INSERT_ID``, PostgreSQL's
    ``RETURNING``: the value this UPDATE wrote, under its row lock), and gives the
    instance back its integer version if the UPDATE fails (an ``IntegrityError``) or
    matched no row (Django then inserts it) — never leaving the expression behind.
    """

    def __init__(
        self,
        instance: Model,
        field: Field[Any, Any],
        original: Any,
        mysql: bool,
        returning: str | None = None,
    ) -> None:
        self.instance = instance
        self.returning = returning
        self.attname = field.attname
        self.table = field.model._meta.db_table if field.model else ""
        self.original = original
        self.mysql = mysql
        self.version: int | None = None
        # Django 6 adds the RETURNING itself for a field assigned an expression, and
        # assigns what it returns to the instance after this wrapper has run.
        self.django_returns = False
        self.done = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if self.done or not sql.startswith("UPDATE") or self.table not in sql:
            return execute(sql, params, many, context)
        self.done = True
        returning = self.returning is not None and not many
        if returning and " RETURNING " in sql.upper():
            returning = False
            column = str(self.returning)
            returned = [item.strip() for item in sql.rsplit(" RETURNING ", 1)[-1].split(",")]
            self.django_returns = any(item == column or item.endswith(f".{column}") for item in returned)
        if returning:
            sql = f"{sql} RETURNING {self.returning}"
        try:
            result = execute(sql, params, many, context)
        except BaseException:
            self.instance.__dict__[self.attname] = self.original
            raise
        cursor = context["cursor"]
        self.django_returns = self.django_returns and cursor.rowcount == 1
        if not cursor.rowcount:
            self.instance.__dict__[self.attname] = self.original
        elif self.mysql and "LAST_INSERT_ID" in sql:
            self.version = int(cursor.lastrowid)
            self.instance.__dict__[self.attname] = self.version
        elif returning and cursor.rowcount == 1:
            self.version = int(cursor.fetchone()[0])
            self.instance.__dict__[self.attname] = self.version
        elif isinstance(self.original, int):
            # The database knows the exact value (a concurrent writer may have moved
            # it): post_save reads it back. Until then, an integer, not an expression.
            self.instance.__dict__[self.attname] = self.original + 1
        return result


def _stored_kind(field: Field[Any, Any]) -> str | None:
    """
    Return how a field's in-memory value relates to what the database stores:
    ``"plain"`` (the same once canonical), ``"decimal"``, ``"json"``, or
    None (only the database can tell: read the row back).
    """
    target = value_field(field)
    if type(target).__module__.split(".")[0] != "django":
        return None
    if isinstance(target, models.GeneratedField):
        return None
    if isinstance(target, models.JSONField):
        return "json"
    if isinstance(target, models.DecimalField):
        return "decimal"
    if isinstance(
        target,
        models.CharField
        | models.TextField
        | models.GenericIPAddressField
        | models.IntegerField
        | models.AutoField
        | models.BooleanField
        | models.FloatField
        | models.DateField
        | models.TimeField
        | models.DurationField
        | models.UUIDField
        | models.BinaryField
        | models.FileField,
    ):
        return "plain"
    return None


def _json_kept_as_text(connection: Any) -> bool:
    # MariaDB and SQLite keep JSON as the text sent; MySQL's JSON type and PostgreSQL's
    # jsonb re-order keys and drop duplicates, so there only a read-back is exact.
    return bool(connection.vendor == "sqlite" or getattr(connection, "mysql_is_mariadb", False))
