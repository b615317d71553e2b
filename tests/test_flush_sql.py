"""
How the write-behind flush writes a batch (issue 10, flush throughput): one multi-row
INSERT for the rows the database lacks, one guarded ``INSERT … ON DUPLICATE KEY
UPDATE`` (MySQL/MariaDB) or ``INSERT … ON CONFLICT (pk) DO UPDATE`` (PostgreSQL,
SQLite) for the rows it has, from the queued states as they are. What these tests pin
down: every column type reaches the database exactly as it was queued (``auto_now``
too: the flush does not stamp again), the statements are one per kind and per chunk, a
row that collides on another unique column fails alone and never overwrites the other
row (nor does a missing row's state, which the update neither inserts nor lets update
the row holding its unique value), the ``wb_seq`` guard refuses an older state, and the
ORM fallback writes the same rows.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, connection, models, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cachepatterns_app.patterns.write_behind import sql
from cachepatterns_app.patterns.write_behind.flush import flush_model
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Author, Counter, Journal, Tally

pytestmark = pytest.mark.django_db(transaction=True)

COLUMNS = [f.attname for f in Journal._meta.concrete_fields]
#: What the update raises when it changed fewer rows than it was given: on MySQL/MariaDB
#: (ON DUPLICATE KEY UPDATE) a data error, which the flush splits; elsewhere a retry.
MISMATCH = IntegrityError if connection.vendor == "mysql" else OperationalError


def flush(model: type[models.Model]) -> Any:
    return flush_model(row_cache_for(model), "default")


def in_db(model: type[models.Model], pk: Any) -> Any:
    return models.QuerySet(model).filter(pk=pk).first()


def values(obj: models.Model) -> dict[str, Any]:
    out = {name: getattr(obj, name) for name in COLUMNS}
    if out["blob"] is not None:
        out["blob"] = bytes(out["blob"])
    return out


def writes(captured: list[dict[str, str]]) -> list[str]:
    """The INSERT/UPDATE statements a flush ran against the model's table, by their verb."""
    table = connection.ops.quote_name(Journal._meta.db_table)
    return [
        q["sql"].split()[0]
        for q in captured
        if table in q["sql"] and q["sql"].split()[0] in ("INSERT", "UPDATE")
    ]


def journal(i: int, owner: Author | None = None) -> Journal:
    return Journal(
        title=f"entry {i} - ünïcode ✓",
        slug=f"entry-{i}",
        note=None if i % 2 else f"note with 'quotes', \"doubles\", back\\slash and %s {i}",
        small=-i,
        big=2**40 + i,
        positive=i,
        flag=bool(i % 2),
        maybe=None if i % 3 == 0 else bool(i % 3 == 1),
        amount=decimal.Decimal(f"{i}.1235"),  # rounds to 3 places the database's way
        ratio=i / 7,
        day=datetime.date(2026, 1, 1) + datetime.timedelta(days=i),
        at=datetime.time(12, i % 60, 5, 123456),
        span=datetime.timedelta(days=i, microseconds=7),
        data={"i": i, "list": [1, "two", None], "nested": {"ok": True}},
        blob=bytes(range(i % 7, 256)),
        ip="2001:db8::1" if i % 2 else "192.0.2.1",
        owner=owner,
    )


@pytest.fixture
def owner() -> Author:
    return Author.objects.create(name="Ada", email="ada@example.com")


def test_every_column_type_reaches_the_database_as_it_was_queued(owner):
    rows = [journal(i, owner if i % 2 else None) for i in range(12)]
    for row in rows:
        row.save()
    queued = {row.pk: values(Journal.objects.get(pk=row.pk)) for row in rows}
    assert flush(Journal).rows == 12
    for pk, expected in queued.items():
        assert values(in_db(Journal, pk)) == expected

    # The same rows again: now through the update statement.
    for i, row in enumerate(rows):
        row.title, row.data, row.blob, row.amount = (
            f"second {i}",
            [i],
            b"\x00\xff",
            decimal.Decimal("-0.0005"),
        )
        row.maybe, row.note, row.owner = None, "now set", None if i % 2 else owner
        row.save()
    queued = {row.pk: values(Journal.objects.get(pk=row.pk)) for row in rows}
    result = flush(Journal)
    assert (result.rows, result.stale, result.failed) == (12, 0, 0)
    for pk, expected in queued.items():
        assert values(in_db(Journal, pk)) == expected


@pytest.fixture
def later_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[datetime.datetime]:
    """``timezone.now()`` a year ahead: an ``auto_now`` the flush ran again would show it."""
    ahead = timezone.now() + datetime.timedelta(days=365)
    yield ahead
    monkeypatch.undo()


def test_the_flush_writes_the_queued_auto_now_values_not_its_own(owner, monkeypatch):
    created = journal(1)
    created.save()
    queued = Journal.objects.get(pk=created.pk)
    counters = [Counter(name=f"c{i}") for i in range(3)]
    for counter in counters:
        counter.save()
    stamped = {c.pk: Counter.objects.get(pk=c.pk).touched for c in counters}
    ahead = timezone.now() + datetime.timedelta(days=365)
    monkeypatch.setattr(timezone, "now", lambda: ahead)
    assert flush(Journal).rows == 1
    assert flush(Counter).rows == 3
    monkeypatch.undo()
    stored = in_db(Journal, created.pk)
    assert (stored.created, stored.changed) == (queued.created, queued.changed)
    assert stored.changed != ahead
    assert {c.pk: in_db(Counter, c.pk).touched for c in counters} == stamped


def test_a_batch_is_one_insert_and_one_update_statement():
    existing = [journal(i) for i in range(10)]
    for row in existing:
        row.save()
    flush(Journal)
    for row in existing:
        row.title = "changed"
        row.save()
    new = [journal(i) for i in range(10, 25)]
    for row in new:
        row.save()
    with CaptureQueriesContext(connection) as ctx:
        result = flush(Journal)
    assert result.rows == 25
    # The update is an INSERT too: … ON DUPLICATE KEY UPDATE (MySQL/MariaDB), … ON CONFLICT
    # DO UPDATE (PostgreSQL, SQLite); one statement each, whatever the vendor.
    statements = [q["sql"] for q in ctx.captured_queries if q["sql"].split()[0] in ("INSERT", "UPDATE")]
    assert writes(ctx.captured_queries) == ["INSERT", "INSERT"]
    assert sum(" ON DUPLICATE KEY UPDATE " in q or " ON CONFLICT " in q for q in statements) == 1
    assert models.QuerySet(Journal).filter(title="changed").count() == 10
    assert models.QuerySet(Journal).count() == 25


def test_a_batch_over_the_statement_limit_is_written_in_chunks(monkeypatch):
    monkeypatch.setattr(sql, "MAX_ROWS", 7)
    sql._writers.clear()
    try:
        rows = [journal(i) for i in range(20)]
        for row in rows:
            row.save()
        with CaptureQueriesContext(connection) as ctx:
            assert flush(Journal).rows == 20
        assert writes(ctx.captured_queries) == ["INSERT"] * 3  # 7 + 7 + 6
        for row in rows:
            row.positive += 100
            row.save()
        with CaptureQueriesContext(connection) as ctx:
            assert flush(Journal).rows == 20
        assert len(writes(ctx.captured_queries)) == 3
    finally:
        sql._writers.clear()
    assert sorted(models.QuerySet(Journal).values_list("positive", flat=True)) == [100 + i for i in range(20)]


def test_an_update_colliding_on_another_unique_column_fails_alone_and_leaves_the_other_row_alone():
    """
    The row whose new label is another row's fails on its own (isolated by the split); it
    must never update the other row (what ``ON DUPLICATE KEY UPDATE`` would do).
    """
    for key, label in (("a", "alpha"), ("b", "beta"), ("c", "gamma")):
        Tally(key=key, label=label, total=1).save(sync=True)
    before_b = models.QuerySet(Tally).values().get(pk="b")
    Tally(key="a", label="beta", total=50).save()  # beta is b's
    Tally(key="c", label="gamma", total=70).save()
    Tally(key="d", label="delta", total=90).save()  # a create in the same batch
    result = flush(Tally)
    assert (result.rows, result.failed) == (2, 1)
    assert models.QuerySet(Tally).values().get(pk="b") == before_b
    assert in_db(Tally, "a").label == "alpha"
    assert (in_db(Tally, "c").total, in_db(Tally, "d").total) == (70, 90)


def test_a_create_colliding_on_another_unique_column_fails_alone():
    Tally(key="x", label="taken", total=1).save(sync=True)
    before = models.QuerySet(Tally).values().get(pk="x")
    Tally(key="y", label="taken", total=2).save()
    Tally(key="z", label="free", total=3).save()
    result = flush(Tally)
    assert (result.rows, result.failed) == (1, 1)
    assert models.QuerySet(Tally).values().get(pk="x") == before
    assert in_db(Tally, "y") is None
    assert in_db(Tally, "z").total == 3


def test_the_update_statement_refuses_a_state_older_than_the_row():
    counter = Counter(name="guarded", views=1)
    counter.save(sync=True)
    models.QuerySet(Counter).filter(pk=counter.pk).update(wb_seq=100, views=5)
    older = in_db(Counter, counter.pk)
    older.views, older.wb_seq = 99, 50
    writer = sql.writer_for(Counter, "default", "wb_seq")
    assert writer.supported, writer.reason
    with pytest.raises(MISMATCH, match="0 of 1 rows updated"), transaction.atomic():
        writer.update([older])
    stored = in_db(Counter, counter.pk)
    assert (stored.views, stored.wb_seq) == (5, 100)


def test_the_update_statement_never_touches_a_row_matched_by_another_unique_column():
    """
    MySQL/MariaDB update through ``ON DUPLICATE KEY UPDATE``, which fires on a conflict in
    any unique index. The flush only sends rows it holds locked, so the key matches
    first; should a row be missing, its state must neither update the row that holds its
    unique value nor be inserted: the statement is refused and rolled back.
    """
    Tally(key="b", label="beta", total=1).save(sync=True)
    before = models.QuerySet(Tally).values().get(pk="b")
    writer = sql.writer_for(Tally, "default", "wb_seq")
    assert writer.supported, writer.reason
    missing = Tally(key="gone", label="beta", total=99, wb_seq=before["wb_seq"] + 10)
    # MySQL/MariaDB: the guard leaves "b" alone and the row count refuses the batch;
    # PostgreSQL/SQLite (ON CONFLICT on the key alone): the insert fails on the label.
    with pytest.raises((OperationalError, IntegrityError)), transaction.atomic():
        writer.update([missing])
    assert models.QuerySet(Tally).values().get(pk="b") == before
    assert in_db(Tally, "gone") is None


@pytest.mark.skipif(
    connection.vendor != "mysql",
    reason="ON CONFLICT (pk) DO UPDATE inserts a missing row; the flush only sends rows it holds locked",
)
def test_the_update_statement_does_not_insert_a_row_that_is_not_there():
    writer = sql.writer_for(Counter, "default", "wb_seq")
    ghost = Counter(name="never created", views=3, wb_seq=7, touched=timezone.now())
    ghost.pk = uuid.uuid4()
    with pytest.raises(MISMATCH, match="0 of 1 rows updated"), transaction.atomic():
        writer.update([ghost])
    assert in_db(Counter, ghost.pk) is None


def test_the_update_statement_writes_every_column_when_the_state_is_newer():
    counter = Counter(name="before", views=1)
    counter.save(sync=True)
    models.QuerySet(Counter).filter(pk=counter.pk).update(wb_seq=10)
    newer = in_db(Counter, counter.pk)
    newer.name, newer.views, newer.wb_seq = "after", 42, 11
    with transaction.atomic():
        sql.writer_for(Counter, "default", "wb_seq").update([newer])
    stored = in_db(Counter, counter.pk)
    assert (stored.name, stored.views, stored.wb_seq) == ("after", 42, 11)


def test_the_orm_fallback_writes_the_same_rows(monkeypatch, owner):
    monkeypatch.setattr(sql.RowWriter, "_unsupported", lambda self, connection: "forced by the test")
    sql._writers.clear()
    try:
        rows = [journal(i, owner) for i in range(4)]
        for row in rows:
            row.save()
        queued = {row.pk: values(Journal.objects.get(pk=row.pk)) for row in rows}
        ahead = timezone.now() + datetime.timedelta(days=365)
        with monkeypatch.context() as clock:
            clock.setattr(timezone, "now", lambda: ahead)
            assert flush(Journal).rows == 4
        for pk, expected in queued.items():
            assert values(in_db(Journal, pk)) == expected
        for row in rows:
            row.title = "again"
            row.save()
        assert flush(Journal).rows == 4
        assert models.QuerySet(Journal).filter(title="again").count() == 4
    finally:
        sql._writers.clear()


def test_keys_that_differ_only_by_case_or_a_trailing_space_are_different_rows():
    """
    The key column compares exactly (check E017 refuses any other for write-behind), and
    so must the flush's statements: ``"k "`` is not ``"k"`` (a PAD SPACE collation would
    match them), ``"K"`` is not ``"k"``.
    """
    keys = ["k", "k ", "K"]
    for i, key in enumerate(keys):
        Tally(key=key, label=f"label {i}", total=i).save()
    assert flush(Tally).rows == 3
    for i, key in enumerate(keys):
        Tally(key=key, label=f"label {i}", total=10 + i).save()
    result = flush(Tally)
    assert (result.rows, result.failed, result.stale) == (3, 0, 0)
    assert sorted(models.QuerySet(Tally).values_list("key", "total")) == [("K", 12), ("k", 10), ("k ", 11)]


def test_what_the_statements_do_not_cover_is_named():
    writer = sql.writer_for(Counter, "default", "wb_seq")
    assert writer.supported, writer.reason
    assert uuid.UUID(str(Counter().pk))  # a key known before insert: the fast path's premise


@pytest.fixture
def fresh_writers() -> Iterator[None]:
    """Writers built after the test changed the table (they check it once, when built)."""
    sql._writers.clear()
    try:
        yield
    finally:
        sql._writers.clear()


@pytest.mark.skipif(connection.vendor != "mysql", reason="ON DUPLICATE KEY UPDATE and its triggers")
def test_an_insert_trigger_does_not_rewrite_a_flushed_update(fresh_writers):
    """
    A review's scenario: ``VALUES(c)`` is the row after a ``BEFORE INSERT`` trigger, so
    ``ON DUPLICATE KEY UPDATE`` let an insert-only rule rewrite every flushed update. A
    table with such a trigger is updated with ``UPDATE … JOIN``, which runs none.
    """
    with connection.cursor() as cursor:
        # "A new counter starts with no likes": an insert-only rule.
        cursor.execute(
            "CREATE TRIGGER cp_test_counter_bi BEFORE INSERT ON testapp_counter "
            "FOR EACH ROW SET NEW.likes = 0"
        )
    try:
        sql._writers.clear()
        counter = Counter(name="liked", likes=0)
        counter.save(sync=True)
        counter.likes, counter.views = 5, 7
        counter.save()
        with CaptureQueriesContext(connection) as ctx:
            assert flush(Counter).rows == 1
        assert any(q["sql"].startswith("UPDATE") and " JOIN " in q["sql"] for q in ctx.captured_queries)
        stored = in_db(Counter, counter.pk)
        assert (stored.views, stored.likes) == (7, 5)
        fresh = Counter(name="new", likes=3)
        fresh.save()
        flush(Counter)
        assert in_db(Counter, fresh.pk).likes == 0  # an insert still runs it
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER cp_test_counter_bi")


@pytest.fixture(params=["read committed", "repeatable read"])
def hashed_label(request, monkeypatch, fresh_writers):
    """Tally's unique label as the long unique key MariaDB builds for a wide column (``USING HASH``)."""
    if connection.vendor != "mysql" or not connection.mysql_is_mariadb:
        pytest.skip("MariaDB long unique keys")
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "isolation_level", request.param)
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SHOW INDEX FROM testapp_tally WHERE Column_name = 'label' AND Non_unique = 0")
        name = cursor.fetchone()[2]
        cursor.execute(
            f"ALTER TABLE testapp_tally DROP INDEX `{name}`, ADD UNIQUE KEY `{name}` (label) USING HASH"
        )
    sql._writers.clear()
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE testapp_tally DROP INDEX `{name}`, ADD UNIQUE KEY `{name}` (label)")
        connection.close()


def test_a_colliding_update_on_a_hash_checked_unique_column_fails_alone(hashed_label):
    """
    A review's scenario: MariaDB checks a long unique key in the server, and at REPEATABLE
    READ ``ON DUPLICATE KEY UPDATE`` matched the row holding the colliding value; the guard
    left it alone, but the batch was retried as if the database were down, never split. Such
    a table is updated with ``UPDATE … JOIN``; the colliding write fails alone.
    """
    for key, label in (("a", "alpha"), ("b", "beta"), ("c", "gamma")):
        Tally(key=key, label=label, total=1).save(sync=True)
    before_b = models.QuerySet(Tally).values().get(pk="b")
    Tally(key="a", label="beta", total=50).save()  # beta is b's
    Tally(key="c", label="gamma", total=70).save()
    Tally(key="d", label="delta", total=90).save()
    result = flush(Tally)
    assert models.QuerySet(Tally).values().get(pk="b") == before_b
    assert (result.rows, result.failed, result.left) == (2, 1, 0)
    assert (in_db(Tally, "c").total, in_db(Tally, "d").total) == (70, 90)


@pytest.mark.skipif(connection.vendor != "mysql", reason="ON DUPLICATE KEY UPDATE")
def test_an_upsert_that_matched_another_row_is_a_data_error_so_the_write_is_isolated(monkeypatch):
    """Should another unique index match first anyway, the batch is split, not retried (DB down)."""
    for key, label in (("a", "alpha"), ("b", "beta")):
        Tally(key=key, label=label, total=1).save(sync=True)
    writer = sql.writer_for(Tally, "default", "wb_seq")
    assert writer.update_kind == "upsert"
    missing = Tally(key="gone", label="beta", total=99, wb_seq=10**12)
    with pytest.raises(IntegrityError, match="matched another row"), transaction.atomic():
        writer.update([missing])
