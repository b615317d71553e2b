"""
Review of the hand-built flush statements (sql.py): each test compares what the fast
path writes with what the ORM path (the flush before the change) writes, column by
column as the database holds it, or pins a key/rowcount/concurrency property.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
import warnings
import zoneinfo
from typing import Any

import pytest
from django.db import connection, connections, models

from cachepatterns_app.patterns.write_behind import sql
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Author, Badge, Reserved, Visit, Wide

pytestmark = pytest.mark.django_db(transaction=True)

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
COLS = [f for f in Reserved._meta.concrete_fields if f.name not in ("id", "wb_seq")]


def flush(model: type[models.Model], **kw: Any) -> Any:
    return flush_model(row_cache_for(model), "default", **kw)


def raw(model: type[models.Model], pk: Any, fields: list[Any]) -> tuple[Any, ...]:
    """The row as the database holds it (no field converters)."""
    qn = connection.ops.quote_name
    cols = ", ".join(qn(f.column) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {cols} FROM {qn(model._meta.db_table)} WHERE {qn(model._meta.pk.column)} = %s",
            [model._meta.pk.get_db_prep_value(pk, connection)],
        )
        row = cursor.fetchone()
    assert row is not None, pk
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


def orm_values(obj: models.Model) -> dict[str, Any]:
    out = {f.attname: getattr(obj, f.attname) for f in COLS}
    if out["blob"] is not None:
        out["blob"] = bytes(out["blob"])
    return out


# One dict per row; the first row of each statement is the all-NULL one (the MySQL
# derived table's first SELECT names and, on MySQL, types the columns).
NULLS: dict[str, Any] = {f.name: None for f in COLS}
VALUES: list[dict[str, Any]] = [
    NULLS,
    {
        "order": 0,
        "select": "",
        "text": "",
        "at": datetime.datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=datetime.UTC),
        "amount": decimal.Decimal("0.0000000001"),
        "ratio": 1 / 3,
        "flag": False,
        "ref": uuid.UUID(int=0),
        "data": {},
        "blob": b"",
        "span": datetime.timedelta(0),
        "big": -(2**63),
    },
    {
        "order": -(2**31),
        "select": "00123",
        "text": "1e5",
        "at": datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS),
        "amount": decimal.Decimal("-1234567890123456.1234567890"),
        "ratio": 1e-300,
        "flag": True,
        "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "data": [],
        "blob": b"\x00\xff\x00",
        "span": datetime.timedelta(days=-1, microseconds=1),
        "big": 2**63 - 1,
    },
    {
        "order": 2**31 - 1,
        "select": "emoji 😀👍🏽 and 'quotes' \\ %s %(x)s",
        "text": "ü" * 40000 + "😀",
        "at": datetime.datetime(1, 1, 2, tzinfo=datetime.UTC),
        "amount": decimal.Decimal("9999999999999999.9999999999"),
        "ratio": 1e300,
        "flag": None,
        "ref": None,
        "data": "a string",
        "blob": bytes(range(256)) * 300,
        "span": datetime.timedelta(days=999999, microseconds=999999),
        "big": 0,
    },
    {
        "order": None,
        "select": "  padded  ",
        "text": "NULL",
        "at": datetime.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=datetime.UTC),
        "amount": decimal.Decimal("0"),
        "ratio": -0.0,
        "flag": False,
        "ref": uuid.uuid4(),
        "data": {"a": None, "b": [1, 2.5, True, "x"], "ü": "😀"},
        "blob": None,
        "span": None,
        "big": None,
    },
    {
        "order": 7,
        "select": "1",
        "text": None,
        "at": None,
        "amount": decimal.Decimal("1.5"),
        "ratio": 123456789.123456789,
        "flag": True,
        "ref": uuid.uuid4(),
        "data": 123,
        "blob": b"x",
        "span": datetime.timedelta(microseconds=1),
        "big": 1,
    },
    dict(NULLS, data=True),
    dict(NULLS, data=1.5),
    dict(NULLS, data="123"),
    dict(NULLS, data=[None]),
]


def _run(fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Create len(VALUES) rows, flush, update each with the next row's values, flush."""
    sql._writers.clear()
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(sql.RowWriter, "_unsupported", lambda self, connection: "forced by the test")
        rows = [Reserved(**v) for v in VALUES]
        for row in rows:
            row.save()
        queued1 = [orm_values(Reserved.objects.get(pk=r.pk)) for r in rows]
        result = flush(Reserved)
        assert (result.rows, result.failed, result.left) == (len(rows), 0, 0)
        stored1 = [raw(Reserved, r.pk, COLS) for r in rows]
        n = len(VALUES)
        for i, row in enumerate(rows):
            for name, value in VALUES[(i + 3) % n if i else 0].items():
                setattr(row, name, value)
            row.save()
        # The all-NULL state first in the update statement too.
        queued2 = [orm_values(Reserved.objects.get(pk=r.pk)) for r in rows]
        result = flush(Reserved)
        assert (result.rows, result.failed, result.left) == (len(rows), 0, 0)
        stored2 = [raw(Reserved, r.pk, COLS) for r in rows]
        read2 = [orm_values(models.QuerySet(Reserved).get(pk=r.pk)) for r in rows]
        assert read2 == queued2
    sql._writers.clear()
    return stored1, stored2, queued1, queued2


def test_fast_path_writes_what_the_orm_path_writes_column_by_column(monkeypatch):
    assert sql.writer_for(Reserved, "default", "wb_seq").supported
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast = _run(True, monkeypatch)
        slow = _run(False, monkeypatch)
    names = [f.name for f in COLS]
    for stage in (0, 1):
        for i, (a, b) in enumerate(zip(fast[stage], slow[stage], strict=True)):
            diff = {n: (x, y) for n, x, y in zip(names, a, b, strict=True) if x != y}
            assert not diff, (stage, i, {k: (str(v[0])[:80], str(v[1])[:80]) for k, v in diff.items()})


def test_a_naive_datetime_is_written_as_the_orm_writes_it(monkeypatch):
    naive = datetime.datetime(2026, 7, 1, 12, 0)
    stored = []
    for fast in (True, False):
        sql._writers.clear()
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(sql.RowWriter, "_unsupported", lambda self, connection: "forced")
            row = Reserved(at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            row.save()
            flush(Reserved)
            row.at = naive
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                row.save()
            assert flush(Reserved).rows == 1
            stored.append(raw(Reserved, row.pk, [Reserved._meta.get_field("at")]))
    sql._writers.clear()
    assert stored[0] == stored[1]


def test_wide_model_60_columns_500_rows_create_and_update():
    rows = [Wide(**{f"c{j}": i * 100 + j for j in range(60)}) for i in range(500)]
    for row in rows:
        row.save()
    result = flush(Wide)
    assert (result.rows, result.failed, result.left) == (500, 0, 0)
    for row in rows:
        row.c59 = -1
        row.save()
    result = flush(Wide)
    assert (result.rows, result.failed, result.left) == (500, 0, 0)
    assert models.QuerySet(Wide).filter(c59=-1).count() == 500
    assert models.QuerySet(Wide).get(pk=rows[499].pk).c58 == 49958


def test_a_one_to_one_primary_key_is_updated_not_recreated():
    authors = [Author.objects.create(name=f"a{i}", email=f"a{i}@example.com") for i in range(5)]
    badges = [Badge(author=a, points=1) for a in authors]
    for badge in badges:
        badge.save()
    assert flush(Badge).rows == 5
    for badge in badges:
        badge.points = 2
        badge.save()
    result = flush(Badge)
    assert (result.rows, result.stale, result.failed, result.left) == (5, 0, 0, 0)
    assert sorted(models.QuerySet(Badge).values_list("points", flat=True)) == [2] * 5


def test_sync_created_bigautofield_rows_are_updated():
    visits = [Visit(page=f"p{i}") for i in range(5)]
    for visit in visits:
        visit.save()  # sync_creates: inserted now, pk from the database
    for visit in visits:
        visit.hits = 9
        visit.save()
    result = flush(Visit)
    assert (result.rows, result.stale, result.failed, result.left) == (5, 0, 0, 0)
    assert sorted(models.QuerySet(Visit).values_list("hits", flat=True)) == [9] * 5


def test_a_state_equal_to_the_row_but_for_wb_seq_counts_as_updated():
    """CLIENT.FOUND_ROWS (MySQL) / upsert counts: only wb_seq changes."""
    rows = [Reserved(order=i) for i in range(5)]
    for row in rows:
        row.save()
    flush(Reserved)
    for row in rows:
        row.save()  # the same values
    result = flush(Reserved)
    assert (result.rows, result.failed, result.left) == (5, 0, 0)


@pytest.mark.skipif("connection.vendor == 'sqlite'")
def test_two_flushes_of_overlapping_batches_in_threads(settings):
    """Each consumer reads different entries of the same rows: both lock the same rows."""
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "WRITE_BEHIND": {"BATCH_SIZE": 50}}
    rows = [Wide(c0=0) for _ in range(60)]
    for row in rows:
        row.save()
    flush(Wide)
    for rnd in range(1, 9):
        for row in reversed(rows) if rnd % 2 else rows:
            row.c0 = rnd
            row.save()
    errors: list[BaseException] = []
    results: list[Any] = []

    def work(name: str) -> None:
        try:
            results.append(flush_model(row_cache_for(Wide), "default", consumer=name))
        except BaseException as e:
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Whatever is left (a thread's flush stops after a short batch) by one more flush.
    while flush(Wide).entries:
        pass
    assert sum(r.failed for r in results) == 0, results
    assert sorted(set(models.QuerySet(Wide).values_list("c0", flat=True))) == [8]


# --- E017 ------------------------------------------------------------------------------

from django.db import connections as _connections  # noqa: E402
from django.test.utils import isolate_apps  # noqa: E402


class TextKey(models.Field):  # type: ignore[type-arg]
    """A project's own text field that is not a CharField subclass."""

    def db_type(self, connection: Any) -> str:
        return "varchar(20)"

    def get_internal_type(self) -> str:
        return "TextKey"


class Upper(models.CharField):  # type: ignore[type-arg]
    """A project's own CharField subclass that converts nothing."""


@isolate_apps("tests.testapp")
def test_e017_misses_a_text_key_of_a_field_class_that_is_not_a_charfield(forget):
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.checks.write_behind import check_write_behind_model
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

    class CustomTextKey(WriteBehindModel):
        code = TextKey(primary_key=True)
        n = models.IntegerField(default=0)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(CustomTextKey)
    found = [m.id for m in check_write_behind_model(CustomTextKey)]
    if _connections["default"].vendor != "mysql":
        pytest.skip("the column's collation is exact on this database")
    # The column takes the database's collation (utf8mb4_unicode_ci in the suite): loose.
    with _connections["default"].schema_editor() as editor:
        editor.create_model(CustomTextKey)
    try:
        CustomTextKey(code="k", n=1).save()
        CustomTextKey(code="K", n=2).save()
        result = flush_model(row_cache_for(CustomTextKey), "default")
        stored = list(models.QuerySet(CustomTextKey).values_list("code", "n"))
    finally:
        with _connections["default"].schema_editor() as editor:
            editor.delete_model(CustomTextKey)
    # Two queued rows, one database row: what E017 exists to refuse.
    assert (result.rows, result.failed, len(stored)) == (1, 1, 1), (result, stored)
    assert found == ["cachepatterns.E017"]


@isolate_apps("tests.testapp")
def test_e017_a_plain_charfield_subclass_with_an_exact_collation_passes(forget):
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.checks.write_behind import check_write_behind_model
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel
    from tests.testapp.collations import EXACT_COLLATION

    class SubclassKey(WriteBehindModel):
        code = Upper(primary_key=True, max_length=10, db_collation=EXACT_COLLATION)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(SubclassKey)
    found = check_write_behind_model(SubclassKey)
    # The hint ("give the key an exact collation") is already followed; the error stays.
    assert [m.id for m in found] == []


@isolate_apps("tests.testapp")
def test_e017_postgresql_deterministic_collation_c_passes(forget):
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.checks.write_behind import check_write_behind_model
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

    if _connections["default"].vendor != "postgresql":
        pytest.skip("PostgreSQL")

    class CKey(WriteBehindModel):
        code = models.CharField(primary_key=True, max_length=10, db_collation="C")
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(CKey)
    with _connections["default"].cursor() as cursor:
        cursor.execute("SELECT collisdeterministic FROM pg_collation WHERE collname = 'C'")
        assert cursor.fetchone() == (True,)  # exact: compares bytes
    assert [m.id for m in check_write_behind_model(CKey)] == []


@isolate_apps("tests.testapp")
def test_e017_one_to_one_key_to_a_loose_text_key_is_refused(forget):
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.checks.write_behind import check_write_behind_model
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

    class Target(models.Model):
        code = models.CharField(
            primary_key=True, max_length=10, db_collation="NOCASE" if connection.vendor == "sqlite" else None
        )

        class Meta:
            app_label = "testapp"

    class Linked(WriteBehindModel):
        target = models.OneToOneField(Target, primary_key=True, on_delete=models.CASCADE)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(Linked)
    expected = [] if connection.vendor == "postgresql" else ["cachepatterns.E017"]
    assert [m.id for m in check_write_behind_model(Linked)] == expected


@isolate_apps("tests.testapp")
def test_postgresql_schema_qualified_db_table_is_updated(forget):
    """Django's documented trick for a table in another schema: db_table '"schema"."table"'."""
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL")

    class InSchema(WriteBehindModel):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4)
        n = models.IntegerField(default=0)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"
            db_table = '"review_s"."in_schema"'

    forget.append(InSchema)
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA IF NOT EXISTS review_s")
    with connection.schema_editor() as editor:
        editor.create_model(InSchema)
    try:
        row = InSchema(n=1)
        row.save()
        assert flush_model(row_cache_for(InSchema), "default").rows == 1
        row.n = 2
        row.save()
        result = flush_model(row_cache_for(InSchema), "default")
        stored = models.QuerySet(InSchema).get(pk=row.pk).n
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA review_s CASCADE")
    assert (result.rows, result.failed, stored) == (1, 0, 2)


def test_a_sync_save_racing_the_flush_write_wins(monkeypatch):
    """A save(sync=True) started while the flush holds the row: it waits, then its newer state stays."""
    row = Reserved(order=1)
    row.save()
    flush(Reserved)
    row.order = 2
    row.save()  # queued
    done = threading.Event()
    original = sql.RowWriter.update

    def sync_save() -> None:
        try:
            other = models.QuerySet(Reserved).get(pk=row.pk)
            other.order = 99
            other.save(sync=True)
        finally:
            connections.close_all()
            done.set()

    def update(self: Any, objs: Any) -> None:
        thread = threading.Thread(target=sync_save)
        thread.start()
        done.wait(1.0)  # blocked on the row lock (or SQLite's write lock)
        original(self, objs)

    monkeypatch.setattr(sql.RowWriter, "update", update)
    result = flush(Reserved)
    done.wait(30)
    assert result.failed == 0
    assert models.QuerySet(Reserved).get(pk=row.pk).order == 99


def test_a_30_digit_decimal_the_column_holds_can_be_queued():
    """Outside sql.py (state._rounded): quantize under the default 28-digit context."""
    row = Reserved(amount=decimal.Decimal("-12345678901234567890.1234567890"))  # max_digits=30
    row.save()
    queued = Reserved.objects.get(pk=row.pk).amount
    assert flush(Reserved).rows == 1
    stored = models.QuerySet(Reserved).get(pk=row.pk).amount
    assert stored == queued  # what a queued save stores is what the database holds
    if connection.vendor != "sqlite":  # SQLite keeps decimals as 15-digit REALs
        assert stored == decimal.Decimal("-12345678901234567890.1234567890")
