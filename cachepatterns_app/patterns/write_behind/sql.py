"""
How a flush writes a batch: one multi-row ``INSERT`` for the rows the database lacks
and one multi-row ``UPDATE`` for the rows it has, built by hand from each field's
``get_db_prep_save``.

Why not ``bulk_create`` / ``bulk_update``: a queued state is already the row as the
database will hold it (``auto_now`` ran when it was saved, values are converted), so
the ORM's per-object ``pre_save`` would only undo that (a second ``auto_now``), and
its SQL compiler costs more than the database's own work. ``bulk_update`` is worse:
one ``CASE WHEN pk=… THEN …`` per column, which the database evaluates row by row
against every branch (quadratic in the batch size).

The statements, per vendor:

- **Creates** (all vendors): ``INSERT INTO t (…) VALUES (…), (…)``. A row inserted
  meanwhile by another flush makes it fail with an integrity error, which the flush
  retries once (the row is then found and updated).
- **Updates, MySQL/MariaDB**: ``INSERT INTO t (…) VALUES (…), (…) ON DUPLICATE KEY
  UPDATE c = IF(t.pk = new.pk AND t.wb_seq < new.wb_seq, new.c, c), …`` (``wb_seq``
  last, as assignments run left to right). ``ON DUPLICATE KEY UPDATE`` fires on a
  conflict in *any* unique index, and unguarded it would let a state whose unique value
  is another row's overwrite that other row; here it cannot:

  - every row of the statement exists and is locked (the flush read them ``FOR
    UPDATE``), and InnoDB checks the primary key first (the clustered index is written
    before any secondary one), so the conflict is the row's own key; a new unique value
    that collides with another row then fails the statement (duplicate entry), and the
    split isolates that write as poison;
  - should another index ever match first, the ``pk =`` guard leaves the matched row as
    it was, and the affected-row count (2 per updated row) rolls the batch back.

  It measured about 25 % less server time per row than ``UPDATE t JOIN (SELECT … UNION
  ALL SELECT …) v ON t.pk = v.pk SET … WHERE t.wb_seq < v.wb_seq``, which stays for the
  tables where the clause is not equivalent to an update (checked once per table, when
  the writer is built):

  - a ``BEFORE INSERT`` trigger: ``VALUES(c)`` is the row after that trigger, so an
    insert-time rule (a default, a stamp) would rewrite every flushed update;
  - a unique index MariaDB checks by hash (``UNIQUE … USING HASH``, which it builds for a
    unique column wider than an index can hold): the server, not InnoDB, checks it, and at
    REPEATABLE READ it reports the *other* row as the duplicate.

  On MySQL (not MariaDB) that join compares the key with a derived table's values, which
  MySQL 8 materialises in the connection's collation: a key column of another collation
  is an error there, so such a table updates through the ORM.
- **Updates, PostgreSQL and SQLite**: ``INSERT … ON CONFLICT (pk) DO UPDATE SET … WHERE
  t.wb_seq < excluded.wb_seq``: the conflict target is the primary key alone, so a
  collision in another unique index still fails; and the insert's columns give each
  parameter its type (no casts).

The flush holds these rows locked (``SELECT … FOR UPDATE``) and has already skipped
the writes that are not newer than the row's ``wb_seq``, so the ``wb_seq`` guard is
a second line of defence: if it ever leaves a row unchanged, the batch is rolled back
and retried rather than marked flushed.

The ORM path stays for what these statements do not cover: multi-table inheritance
(a row spans several tables), fields that need their own SQL placeholder (GIS,
PostgreSQL arrays and ranges; Django's binary field is handled), and other database
vendors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import django
from django.db import IntegrityError, OperationalError, connections, models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Field, Model

from cachepatterns_app.identity import value_field

__all__ = ["RowWriter", "writer_for"]

logger = logging.getLogger(__name__)

#: Rows per statement, at most: keeps a statement well under any packet limit.
MAX_ROWS = 1000
#: Parameters per statement, at most (PostgreSQL's protocol limit is 65535).
MAX_PARAMS = 65535
#: From this many keys on, a tombstone lookup first asks whether the model has any.
PROBE_TOMBSTONES_AT = 16


class RowWriter:
    """Writes decoded rows of one model into one database with hand-built statements."""

    def __init__(self, model: type[Model], using: str, seq_field: str) -> None:
        connection = connections[using]
        ops = connection.ops
        self.model = model
        self.using = using
        self.vendor = connection.vendor
        self.fields: list[Field[Any, Any]] = list(model._meta.concrete_fields)
        pk = model._meta.pk
        assert pk is not None
        self.pk = pk
        self.table = ops.quote_name(model._meta.db_table)
        self.columns = [ops.quote_name(str(f.column)) for f in self.fields]
        self.pk_column = ops.quote_name(str(pk.column))
        seq: Any = model._meta.get_field(seq_field)
        self.seq_column = ops.quote_name(str(seq.column))
        self.specs = [(f, f.attname, _unchanged(f, connection)) for f in self.fields]
        # A key whose column value reads back through the field's to_python alone
        # (Django's UUID, integer and text fields; a one-to-one key through its target).
        key = value_field(pk)
        self.simple_pk = type(key).__module__.startswith("django.") and isinstance(
            key, models.UUIDField | models.IntegerField | models.AutoField | models.CharField
        )
        self.plain = ["%s"] * len(self.fields)
        # Django's binary fields ask the backend for their placeholder, value by value.
        self.binary = [i for i, f in enumerate(self.fields) if _binary_placeholder(f)]
        self.reason = self._unsupported(connection)
        if self.reason:
            logger.debug("Write-behind flush of %s uses the ORM: %s", model._meta.label, self.reason)
        #: How rows the database holds are updated: "upsert", "join" or "orm" (see the module).
        self.update_kind = (
            "upsert" if self.vendor != "mysql" or self.reason else self._mysql_update_kind(connection)
        )

    @property
    def supported(self) -> bool:
        return not self.reason

    def _unsupported(self, connection: Any) -> str:
        if self.model._meta.parents:
            return "multi-table inheritance (a row spans several tables)"
        if self.vendor not in ("mysql", "postgresql", "sqlite"):
            return f"database vendor {self.vendor!r}"
        custom = [f.name for f in self.fields if _placeholder(type(f)) and not _binary_placeholder(f)]
        if custom:
            return f"fields with their own SQL placeholder: {', '.join(custom)}"
        return ""

    def _mysql_update_kind(self, connection: Any) -> str:
        """Whether ``ON DUPLICATE KEY UPDATE`` is equivalent to an update of this table (see the module)."""
        table = self.model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = DATABASE() "
                "AND EVENT_OBJECT_TABLE = %s AND EVENT_MANIPULATION = 'INSERT' AND ACTION_TIMING = 'BEFORE'",
                [table],
            )
            (triggers,) = cursor.fetchone()
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = %s AND NON_UNIQUE = 0 AND INDEX_TYPE = 'HASH'",
                [table],
            )
            (hashed,) = cursor.fetchone()
        if not (triggers or hashed):
            return "upsert"
        why = "a BEFORE INSERT trigger" if triggers else "a unique index checked by hash"
        if not connection.mysql_is_mariadb and self._collations_differ(connection):
            logger.debug("Write-behind flush of %s updates through the ORM: %s", self.model._meta.label, why)
            return "orm"
        logger.debug("Write-behind flush of %s updates with UPDATE … JOIN: %s", self.model._meta.label, why)
        return "join"

    def _collations_differ(self, connection: Any) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COLLATION_NAME, @@collation_connection FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                [self.model._meta.db_table, self.pk.column],
            )
            found = cursor.fetchone()
        return bool(found and found[0] is not None and found[0] != found[1])

    def locked_seqs(self, pks: Sequence[Any]) -> dict[Any, int] | None:
        """
        Return ``{pk: wb_seq}`` of the rows of ``pks`` the database has, locked in key
        order, or None where the key type needs the ORM's conversions (then the caller
        asks the ORM).
        """
        if not self.simple_pk:
            return None
        connection = connections[self.using]
        prep = self.pk.get_db_prep_value
        params = [prep(pk, connection) for pk in pks]
        lock = connection.ops.for_update_sql() if connection.features.has_select_for_update else ""
        out: dict[Any, int] = {}
        to_python = self.pk.to_python
        # A key the database returns as the text it was sent (the common case) maps back
        # to the caller's own key; anything else goes through the field's to_python.
        sent = {str(param): pk for param, pk in zip(params, pks, strict=True)}
        for start in range(0, len(params), MAX_ROWS):
            chunk = params[start : start + MAX_ROWS]
            sql = (
                f"SELECT {self.pk_column}, {self.seq_column} FROM {self.table} "  # noqa: S608
                f"WHERE {self.pk_column} IN ({', '.join(['%s'] * len(chunk))}) "
                f"ORDER BY {self.pk_column} {lock}"
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, chunk)
                for pk, seq in cursor.fetchall():
                    mine = sent.get(pk) if type(pk) is str else None
                    out[to_python(pk) if mine is None else mine] = int(seq or 0)
        return out

    def _batches(self, objs: Sequence[Model]) -> list[Sequence[Model]]:
        ops = connections[self.using].ops
        size = max(1, min(ops.bulk_batch_size(self.fields, objs), MAX_PARAMS // len(self.fields), MAX_ROWS))
        return [objs[i : i + size] for i in range(0, len(objs), size)]

    def _rows(self, objs: Sequence[Model]) -> tuple[list[list[str]], list[Any]]:
        """Return each row's placeholders and the parameters of all rows, in column order."""
        connection = connections[self.using]
        specs = self.specs
        params: list[Any] = []
        append = params.append
        for obj in objs:
            values = obj.__dict__
            for field, attname, unchanged in specs:
                value = values[attname]
                append(value if type(value) in unchanged else field.get_db_prep_save(value, connection))
        width = len(specs)
        if not self.binary:
            return [self.plain] * len(objs), params
        rows = []
        ops: Any = connection.ops
        for start in range(0, len(params), width):
            row = list(self.plain)
            for index in self.binary:
                # What the ORM's compiler asks the field for (MySQL: ``_binary %s``).
                row[index] = _binary_sql(ops, params[start + index])
            rows.append(row)
        return rows, params

    def insert(self, objs: Sequence[Model]) -> None:
        """Insert ``objs`` (rows the database does not have) as they are: no ``pre_save``."""
        for chunk in self._batches(objs):
            rows, params = self._rows(chunk)
            tuples = ", ".join("(" + ", ".join(row) + ")" for row in rows)
            # Only quoted identifiers and placeholders are interpolated: every value is a parameter.
            sql = f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES {tuples}"  # noqa: S608
            with connections[self.using].cursor() as cursor:
                cursor.execute(sql, params)

    def update(self, objs: Sequence[Model]) -> None:
        """Overwrite the rows of ``objs`` (which the database has, locked) with their values."""
        upsert = self.vendor == "mysql" and self.update_kind == "upsert"
        for chunk in self._batches(objs):
            rows, params = self._rows(chunk)
            with connections[self.using].cursor() as cursor:
                cursor.execute(self._update_sql(rows), params)
                changed = cursor.rowcount
            # ON DUPLICATE KEY UPDATE counts 2 per row it updated (1 per row it inserted
            # or left as it was); the other statements count 1.
            if changed == (2 if upsert else 1) * len(chunk):
                continue
            updated = changed // 2 if upsert else changed
            if upsert:
                # A state whose conflict was another row's unique value (the guard left
                # that row as it was): a data error, so the split isolates it as poison.
                raise IntegrityError(
                    f"Write-behind flush of {self.model._meta.label}: {updated} of {len(chunk)} rows "
                    "updated (a row's new unique value matched another row, or a row holds a newer "
                    "wb_seq); the batch is split to find the write."
                )
            # The rows are locked and were checked: only a row changed by something that
            # ignores the locks gets here. Roll back and let the flush retry.
            raise OperationalError(
                f"Write-behind flush of {self.model._meta.label}: {updated} of {len(chunk)} "
                "rows updated (the others hold a newer wb_seq); the batch is retried."
            )

    def _update_sql(self, rows: list[list[str]]) -> str:
        # As in insert(): identifiers and placeholders only, the values are parameters.
        if self.vendor == "mysql":
            if self.update_kind == "upsert":
                return self._upsert_sql(rows)
            first = "SELECT " + ", ".join(f"{p} AS {c}" for p, c in zip(rows[0], self.columns, strict=True))
            others = "".join(" UNION ALL SELECT " + ", ".join(row) for row in rows[1:])
            assignments = ", ".join(f"t.{c} = v.{c}" for c in self.columns if c != self.pk_column)
            return (
                f"UPDATE {self.table} AS t JOIN ({first}{others}) AS v "  # noqa: S608
                f"ON t.{self.pk_column} = v.{self.pk_column} SET {assignments} "
                f"WHERE t.{self.seq_column} < v.{self.seq_column}"
            )
        tuples = ", ".join("(" + ", ".join(row) + ")" for row in rows)
        assignments = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c != self.pk_column)
        return (
            f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES {tuples} "  # noqa: S608
            f"ON CONFLICT ({self.pk_column}) DO UPDATE SET {assignments} "
            f"WHERE {self.table}.{self.seq_column} < excluded.{self.seq_column}"
        )

    def _upsert_sql(self, rows: list[list[str]]) -> str:
        """MySQL/MariaDB: the guarded ``ON DUPLICATE KEY UPDATE`` of the module's docstring."""
        connection: Any = connections[self.using]
        # MySQL deprecates VALUES() here (8.0.20) for an alias of the new row; MariaDB
        # has no such alias and keeps VALUES() for this clause.
        aliased = not connection.mysql_is_mariadb and connection.mysql_version >= (8, 0, 19)
        alias = " AS new" if aliased else ""

        def new(column: str) -> str:
            return f"new.{column}" if aliased else f"VALUES({column})"

        table, pk, seq = self.table, self.pk_column, self.seq_column
        mine = f"{table}.{pk} = {new(pk)}"
        guard = f"{mine} AND {table}.{seq} < {new(seq)}"
        assignments = [
            f"{c} = IF({guard}, {new(c)}, {table}.{c})" for c in self.columns if c not in (pk, seq)
        ]
        # Last: the guards above read the row's wb_seq as it was.
        assignments.append(f"{seq} = IF({mine}, GREATEST({table}.{seq}, {new(seq)}), {table}.{seq})")
        tuples = ", ".join("(" + ", ".join(row) + ")" for row in rows)
        return (
            f"INSERT INTO {table} ({', '.join(self.columns)}) VALUES {tuples}{alias} "  # noqa: S608
            f"ON DUPLICATE KEY UPDATE {', '.join(assignments)}"
        )


# Django 6 renamed Field.get_placeholder(value, compiler, connection) -> sql to
# get_placeholder_sql(...) -> (sql, params), and binary_placeholder_sql(value) -> sql to
# binary_placeholder_sql(value, compiler) -> (sql, params).
_NEW_PLACEHOLDERS = django.VERSION >= (6,)


def _placeholder(cls: type) -> Any:
    return getattr(cls, "get_placeholder_sql" if _NEW_PLACEHOLDERS else "get_placeholder", None)


def _binary_placeholder(field: Field[Any, Any]) -> bool:
    """Whether ``field``'s placeholder is Django's binary one (which the writer asks the backend for)."""
    method = _placeholder(type(field))
    return method is not None and method is _placeholder(models.BinaryField)


def _binary_sql(ops: Any, value: Any) -> str:
    if _NEW_PLACEHOLDERS:
        sql, _params = ops.binary_placeholder_sql(value, None)  # its params are (value,)
        return str(sql)
    return str(ops.binary_placeholder_sql(value))


def _unchanged(field: Field[Any, Any], connection: Any) -> frozenset[type]:
    """Return the value types ``field.get_db_prep_save`` returns as they are."""
    # Only Django's own text, integer and boolean fields, and only where their class
    # does not change how a value is prepared: a project's field may map even a str.
    cls = type(field)
    if cls.get_db_prep_save is not Field.get_db_prep_save:
        return frozenset()
    prep, db_prep = cls.get_prep_value, cls.get_db_prep_value
    if db_prep is Field.get_db_prep_value:
        if prep in (models.CharField.get_prep_value, models.TextField.get_prep_value):
            return frozenset((str, type(None)))
        if prep is models.BooleanField.get_prep_value:
            return frozenset((bool, type(None)))
    if (
        db_prep is models.IntegerField.get_db_prep_value
        and prep is models.IntegerField.get_prep_value
        # PostgreSQL's adapter wraps integers in its own types; MySQL's and SQLite's do not.
        and type(connection.ops).adapt_integerfield_value is BaseDatabaseOperations.adapt_integerfield_value
    ):
        return frozenset((int, type(None)))
    return frozenset()


_writers: dict[tuple[type[Model], str], tuple[Any, RowWriter]] = {}


def writer_for(model: type[Model], using: str, seq_field: str) -> RowWriter:
    """Return the model's writer for ``using``, worked out once per database settings."""
    # Checked against the settings entry itself (kept, not its id(), which a later entry
    # could reuse): an override that points the alias elsewhere gets a new writer.
    config = connections[using].settings_dict
    memo = _writers.get((model, using))
    if memo is None or memo[0] is not config:
        memo = _writers[(model, using)] = (config, RowWriter(model, using, seq_field))
    return memo[1]


def locked_tombstones(using: str, label: str, texts: Sequence[str], *, probe: bool = True) -> dict[str, int]:
    """Return ``{pk_text: seq}`` of the tombstones of ``label``'s rows ``texts``, locked in key order."""
    from cachepatterns_app.models import WriteBehindTombstone

    connection = connections[using]
    quote = connection.ops.quote_name
    meta = WriteBehindTombstone._meta
    column: Any = meta.get_field
    table, label_c, text_c, seq_c = (
        quote(meta.db_table),
        quote(column("label").column),
        quote(column("pk_text").column),
        quote(column("seq").column),
    )
    if probe and len(texts) >= PROBE_TOMBSTONES_AT and not _any_tombstone(connection, table, label_c, label):
        return {}
    lock = connection.ops.for_update_sql() if connection.features.has_select_for_update else ""
    out: dict[str, int] = {}
    for start in range(0, len(texts), MAX_ROWS):
        chunk = list(texts[start : start + MAX_ROWS])
        sql = (
            f"SELECT {text_c}, {seq_c} FROM {table} WHERE {label_c} = %s "  # noqa: S608
            f"AND {text_c} IN ({', '.join(['%s'] * len(chunk))}) ORDER BY {text_c} {lock}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [label, *chunk])
            out.update((text, int(seq)) for text, seq in cursor.fetchall())
    return out


def _any_tombstone(connection: Any, table: str, label_column: str, label: str) -> bool:
    """
    Whether ``label`` has any tombstone: one indexed probe, where most models have none
    (deletes are rare, and the reclaim task prunes them), instead of a lookup of every key.

    A plain read, in the flush's own transaction with its rows locked. Not a locking one:
    that would wait for any uncommitted tombstone of the model, a direct delete's too, in
    a deadlock with that transaction if it then writes a row this flush holds. The one
    lookup that must wait for an uncommitted tombstone, the new-row check after an insert
    (``flush._check_new_rows``), looks its keys up without this probe.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {table} WHERE {label_column} = %s LIMIT 1", [label])  # noqa: S608
        return cursor.fetchone() is not None
