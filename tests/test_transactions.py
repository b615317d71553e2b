"""
Invalidation waits for the outermost commit and never runs for work that rolled
back (design.md, correctness rule 2); a read-through inside a transaction that
already wrote is not cached.

Each write path runs inside nested ``atomic()`` blocks while the test watches the
row's raw Redis key: still there after the inner block, gone right after the
outer commit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py
from django.db import connection, models, transaction

from cachepatterns_app.batch import Batch
from tests.support import MYSQL, SQLITE, Worker, cachepatterns, keys_of, settle, unique_key
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def rolled_back(work: Callable[[], object], *, nested: bool = False) -> None:
    """Run ``work`` in an atomic block (inside a second one if ``nested``) that then rolls back."""
    with transaction.atomic():
        if nested:
            with transaction.atomic():
                work()
        else:
            work()
        raise Rollback


@pytest.fixture
def authors() -> list[Author]:
    return [Author.objects.create(name=f"A{i}", email=f"a{i}@example.com", slug=f"a{i}") for i in range(3)]


def warm(redis: Any, *rows: Author) -> None:
    Author.objects.get_many([row.pk for row in rows])
    settle()
    for row in rows:
        assert redis.exists(keys_of(Author, row.pk).value) == 1


def cached(redis: Any, row: Author) -> bool:
    return bool(redis.exists(keys_of(Author, row.pk).value))


def db(pk: Any) -> Author | None:
    return models.QuerySet(Author).filter(pk=pk).first()


def db_name(pk: Any) -> str:
    row = db(pk)
    assert row is not None
    return row.name


# Each write path, applied to ``target`` (a row that is cached).
def save(target: Author) -> None:
    target.name = "changed"
    target.save()


def save_update_fields(target: Author) -> None:
    target.name = "changed"
    target.save(update_fields=["name"])


def delete(target: Author) -> None:
    copy.copy(target).delete()  # a copy: Model.delete() sets pk to None, the test still needs it


def queryset_update(target: Author) -> None:
    assert Author.objects.filter(pk=target.pk).update(name="changed") == 1


def queryset_delete(target: Author) -> None:
    Author.objects.filter(pk=target.pk).delete()


def bulk_update(target: Author) -> None:
    target.name = "changed"
    assert Author.objects.bulk_update([target], ["name"]) == 1


def bulk_create_upsert(target: Author) -> None:
    # An upsert that rewrites an existing (cached) row, identified by its pk.
    kwargs: dict[str, Any] = {"update_conflicts": True, "update_fields": ["name"]}
    if not MYSQL:  # MySQL/MariaDB infer the conflict target; the others must be told
        kwargs["unique_fields"] = ["id"]
    Author.objects.bulk_create(
        [Author(pk=target.pk, name="changed", email=target.email, slug=target.slug)], **kwargs
    )


WRITES: dict[str, Callable[[Author], None]] = {
    "save": save,
    "save-update_fields": save_update_fields,
    "delete": delete,
    "queryset-update": queryset_update,
    "queryset-delete": queryset_delete,
    "bulk_update": bulk_update,
    "bulk_create-upsert": bulk_create_upsert,
}


# -- after the outermost commit, never before ---------------------------------------------------


@pytest.mark.parametrize("write", list(WRITES))
def test_invalidation_waits_for_the_outermost_commit(redis, authors, write):
    target, bystander, _ = authors
    warm(redis, *authors)

    with transaction.atomic():
        with transaction.atomic():
            with transaction.atomic():
                WRITES[write](target)
            assert cached(redis, target)
        assert cached(redis, target)
        # Until the commit, other connections are served the committed row.
        other = Worker(lambda: Author.objects.get(pk=target.pk).name)
        other.start()
        assert other.result() == "A0"
        assert cached(redis, target)
    # The on_commit hooks run synchronously inside the outermost commit.
    assert not cached(redis, target)
    assert cached(redis, bystander)  # exactly the written row

    if "delete" in write:
        assert db(target.pk) is None
        with pytest.raises(Author.DoesNotExist):
            Author.objects.get(pk=target.pk)
    else:
        assert db_name(target.pk) == "changed"
        assert Author.objects.get(pk=target.pk).name == "changed"


@pytest.mark.parametrize("write", list(WRITES))
def test_outside_a_transaction_invalidation_is_immediate(redis, authors, write):
    target = authors[0]
    warm(redis, target)
    WRITES[write](target)
    assert not cached(redis, target)


@pytest.mark.parametrize("write", list(WRITES))
def test_rolled_back_transaction_invalidates_nothing(redis, authors, write):
    target = authors[0]
    warm(redis, *authors)
    with pytest.raises(Rollback):
        rolled_back(lambda: WRITES[write](target), nested=True)
    assert all(cached(redis, row) for row in authors)
    assert db_name(target.pk) == "A0"
    assert Author.objects.get(pk=target.pk).name == "A0"


@pytest.mark.parametrize("write", list(WRITES))
def test_rolled_back_savepoint_invalidates_nothing_but_the_rest_commits(redis, authors, write):
    kept, undone, _ = authors
    warm(redis, *authors)
    with transaction.atomic():
        WRITES[write](kept)  # the outer block's own write
        with pytest.raises(Rollback):  # a savepoint, rolled back
            rolled_back(lambda: WRITES[write](undone))
        assert cached(redis, kept)
    assert not cached(redis, kept)
    assert cached(redis, undone)
    assert db_name(undone.pk) == "A1"
    assert Author.objects.get(pk=undone.pk).name == "A1"


def test_a_savepoint_rolled_back_after_a_committed_one(redis, authors):
    first, second, third = authors
    warm(redis, *authors)
    with transaction.atomic():
        with transaction.atomic():
            save(first)  # released savepoint: its invalidation must survive
        with pytest.raises(Rollback):
            rolled_back(lambda: save(second))
        save(third)  # back at the outer level
    assert not cached(redis, first)
    assert cached(redis, second)
    assert not cached(redis, third)


def test_on_commit_hooks_are_where_the_invalidation_waits(redis, authors, django_capture_on_commit_callbacks):
    target = authors[0]
    warm(redis, target)
    with transaction.atomic():
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            save(target)
            save(target)
        # One hook for both saves, still waiting for the commit.
        assert len(callbacks) == 1
        assert cached(redis, target)
    assert not cached(redis, target)  # the real commit ran it


# -- bulk_create ------------------------------------------------------------------------------------


def test_bulk_create_invalidates_reused_primary_keys_after_commit(redis, authors):
    target = authors[0]
    warm(redis, target)
    # Delete the row behind the app's back (raw SQL is out of scope), then create a
    # new row with the same primary key: the old cached row must not survive it.
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Author._meta.db_table} WHERE id = %s", [target.pk])
    assert cached(redis, target)

    with transaction.atomic():
        with transaction.atomic():
            created = Author.objects.bulk_create(
                [
                    Author(pk=target.pk, name="reborn", email="reborn@example.com"),
                    Author(name="fresh", email="fresh@example.com"),
                ]
            )
        assert cached(redis, target)
    assert not cached(redis, target)
    assert Author.objects.get(pk=target.pk).name == "reborn"
    if created[1].pk is not None:  # backends that return new pks from bulk inserts
        assert Author.objects.get(pk=created[1].pk).name == "fresh"
    assert Author.objects.get(email="fresh@example.com").name == "fresh"


def test_bulk_create_rolled_back_invalidates_nothing(redis, authors):
    warm(redis, *authors)
    with pytest.raises(Rollback):
        rolled_back(lambda: Author.objects.bulk_create([Author(name="new", email="new@example.com")]))
    assert all(cached(redis, row) for row in authors)
    assert not Author.objects.filter(email="new@example.com").exists()


def test_bulk_create_upsert_by_unique_field_invalidates_the_rewritten_row(redis, authors, request):
    target = authors[0]
    warm(redis, target)
    kwargs: dict[str, Any] = {"update_conflicts": True, "update_fields": ["name"]}
    if not MYSQL:
        kwargs["unique_fields"] = ["email"]
    with transaction.atomic():
        Author.objects.bulk_create([Author(name="upserted", email=target.email)], **kwargs)
    assert db_name(target.pk) == "upserted"
    assert Author.objects.get(pk=target.pk).name == "upserted"


# -- reads inside a transaction -------------------------------------------------------------------


def test_read_through_after_a_write_in_the_transaction_is_not_cached(redis, authors):
    written, other, _ = authors
    with transaction.atomic():
        save(written)
        # Uncached rows, read inside a transaction that has written: the reads see
        # the transaction's own data and nothing is stored (it is not committed).
        assert Author.objects.get(pk=written.pk).name == "changed"
        assert Author.objects.get(pk=other.pk).name == "A1"
        assert Author.objects.get(email=other.email).pk == other.pk
        assert set(Author.objects.get_many([written.pk, other.pk])) == {written.pk, other.pk}
        settle()
        for row in (written, other):
            keys = keys_of(Author, row.pk)
            assert redis.exists(keys.value, keys.lease) == 0
        assert redis.exists(unique_key("testapp.author", "email", other.email)) == 0
    settle()
    assert not cached(redis, written)
    assert not cached(redis, other)
    assert Author.objects.get(pk=written.pk).name == "changed"


def test_a_rolled_back_write_never_reaches_the_cache(redis, authors):
    target = authors[0]
    seen = []

    def write_then_read() -> None:
        save(target)
        seen.append(Author.objects.get(pk=target.pk).name)  # uncommitted, so not cached

    with pytest.raises(Rollback):
        rolled_back(write_then_read)
    assert seen == ["changed"]
    settle()
    assert not cached(redis, target)
    assert Author.objects.get(pk=target.pk).name == "A0"


def test_read_after_write_in_a_transaction_sees_the_write_even_when_cached(redis, authors):
    target = authors[0]
    warm(redis, target)
    with transaction.atomic():
        save(target)
        assert models.QuerySet(Author).get(pk=target.pk).name == "changed"  # what the ORM says
        assert Author.objects.get(pk=target.pk).name == "changed"


def test_read_only_transaction_fills_per_isolation_level(redis, authors):
    target = authors[0]
    with transaction.atomic():
        assert Author.objects.get(pk=target.pk).name == "A0"
        settle()
        filled = cached(redis, target)
    if SQLITE:
        # SQLite reads inside a transaction come from a snapshot that may predate
        # the lease, so the library never fills from inside an atomic block there.
        assert not filled
    elif MYSQL:
        # Django's MySQL default is READ COMMITTED: every statement sees the latest
        # commits, so a read-only transaction may fill.
        assert getattr(connection, "isolation_level", None) == "read committed"
        assert filled
    else:
        # PostgreSQL: Django leaves the server's default, READ COMMITTED, where every
        # statement sees the latest commits, so a read-only transaction may fill.
        assert connection.vendor == "postgresql"
        assert transaction_isolation() == "read committed"
        assert filled


def transaction_isolation() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        (level,) = cursor.fetchone()
    return str(level)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's isolation_level option")
@pytest.mark.parametrize("level", ["REPEATABLE_READ", "SERIALIZABLE"])
def test_postgresql_snapshot_transactions_do_not_fill(redis, authors, monkeypatch, level):
    # A transaction's snapshot is taken at its first statement, possibly before a write
    # that committed and invalidated since: what it reads must never be cached.
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    target = authors[0]
    options = {**connection.settings_dict.get("OPTIONS", {}), "isolation_level": IsolationLevel[level]}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    connection.close()
    try:
        with transaction.atomic():
            assert transaction_isolation() == level.replace("_", " ").lower()
            assert Author.objects.get(pk=target.pk).name == "A0"
            settle()
            assert not cached(redis, target)
        Author.objects.get(pk=target.pk)  # autocommit: each statement is its own snapshot
        settle()
        assert cached(redis, target)
    finally:
        connection.close()  # the next test connects with the suite's own options


# -- cost of invalidation ----------------------------------------------------------------------


class SocketWrites:
    """Count the packets of commands redis-py writes (one per round trip), any connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis_py.connection.AbstractConnection.send_packed_command

        def counting(conn: Any, command: Any, check_health: bool = True) -> Any:
            self.count += 1
            return original(conn, command, check_health)

        monkeypatch.setattr(redis_py.connection.AbstractConnection, "send_packed_command", counting)


def test_many_saves_in_one_transaction_cost_one_round_trip_at_commit(redis, monkeypatch):
    rows = [Author.objects.create(name=f"N{i}", email=f"n{i}@example.com") for i in range(100)]
    with cachepatterns(STATS=False):  # no statistics flush mixed into the count
        warm(redis, *rows)
        writes = SocketWrites(monkeypatch)
        with transaction.atomic():
            for row in rows:
                save(row)
            for row in rows[:10]:
                save(row)  # the same rows again: still one command each
            owners = [getattr(hook, "__self__", None) for _, hook, *_ in connection.run_on_commit]
            assert len(owners) == 1
            assert isinstance(owners[0], Batch)
            assert len(owners[0].commands) == 100
            assert writes.count == 0  # nothing sent before the commit
        assert writes.count == 1
    assert not any(cached(redis, row) for row in rows)
    assert Author.objects.get(pk=rows[0].pk).name == "changed"


def test_savepoints_add_one_batch_per_level(redis, authors, monkeypatch):
    with cachepatterns(STATS=False):
        warm(redis, *authors)
        writes = SocketWrites(monkeypatch)
        with transaction.atomic():
            save(authors[0])
            with transaction.atomic():
                save(authors[1])
                save(authors[2])
            hooks = connection.run_on_commit
            assert len(hooks) == 2
        assert writes.count == 2  # one pipeline per hook
    assert not any(cached(redis, row) for row in authors)
