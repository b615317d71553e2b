"""
No stale set (design.md, correctness rule 1), with the race driven step by step.

A reader misses, takes the fill lease and runs its SELECT; an execute wrapper in
the reader's thread holds it right after the SELECT returned the OLD row. The
test thread then writes and commits (the invalidation runs at once, deleting the
row key and the lease). Only then is the reader released: it returns the old row
and sends its fill. The fill must be refused, so that once everything has landed
the cache holds nothing or what the database holds, never the old row. The same
holds in the other order: the write already made inside an open transaction,
the reader loading the still-committed row, then the commit.

A control test runs the same interleaving with the lease check removed from the
fill script and shows the old row does land: the race is real and the assertion
can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import models, transaction

from cachepatterns_app import store as store_module
from cachepatterns_app.registry import row_cache_for
from tests.support import HeldReader, keys_of, settle, sqlite_wal
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

# A fill script without the lease check: what the library would do without it.
FILL_WITHOUT_LEASE_CHECK = """
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
"""


@pytest.fixture(autouse=True)
def _sqlite_wal() -> Iterator[None]:
    with sqlite_wal():
        yield


def cached_row(redis: Any, pk: Any) -> Author | None:
    """Return the row cached for ``pk`` (decoded by the library's codec), or None."""
    raw = redis.get(keys_of(Author, pk).value)
    if raw is None:
        return None
    cache = row_cache_for(Author)
    assert cache is not None
    return cache.decode(raw, "default")  # type: ignore[return-value]


def db_row(pk: Any) -> Author | None:
    return models.QuerySet(Author).filter(pk=pk).first()


READERS: dict[str, Callable[[Author], Callable[[], Any]]] = {
    "get-pk": lambda a: lambda: Author.objects.get(pk=a.pk),
    "get-email": lambda a: lambda: Author.objects.get(email=a.email),
    "get_many": lambda a: lambda: Author.objects.get_many([a.pk])[a.pk],
}


def save(a: Author) -> None:
    a.name = "new"
    a.save()


def update(a: Author) -> None:
    assert Author.objects.filter(pk=a.pk).update(name="new") == 1


def bulk_update(a: Author) -> None:
    a.name = "new"
    assert Author.objects.bulk_update([a], ["name"]) == 1


def delete(a: Author) -> None:
    a.delete()


def queryset_delete(a: Author) -> None:
    assert Author.objects.filter(pk=a.pk).delete()[0] >= 1


WRITERS: dict[str, Callable[[Author], None]] = {
    "save": save,
    "update": update,
    "bulk_update": bulk_update,
    "delete": delete,
    "queryset-delete": queryset_delete,
}


def race(redis: Any, reader: str, writer: str) -> tuple[Author, Author]:
    """Run the interleaving; return (the author as created, what the reader loaded)."""
    author = Author.objects.create(name="old", email="old@example.com", slug="old")
    keys = keys_of(Author, author.pk)
    held = HeldReader(READERS[reader](author), marker="bio")
    held.start()
    # The reader is parked after its SELECT, holding the fill lease.
    assert redis.get(keys.lease) is not None
    assert redis.exists(keys.value) == 0

    # The writer loads its copy with a plain QuerySet (a cached get would wait for the lease).
    WRITERS[writer](models.QuerySet(Author).get(pk=author.pk))
    # Committed (autocommit) and invalidated: the lease the reader holds is void.
    assert redis.exists(keys.lease) == 0

    loaded = held.release()
    settle()  # the reader's fill was sent without waiting for a reply; let it land
    return author, loaded


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("reader", list(READERS))
def test_a_reader_that_loaded_before_a_commit_cannot_leave_the_old_row(redis, reader, writer):
    author, loaded = race(redis, reader, writer)

    # The interleaving really happened: the reader loaded the row as it was
    # before the write committed.
    assert loaded.pk == author.pk
    assert loaded.name == "old"

    cached = cached_row(redis, author.pk)
    current = db_row(author.pk)
    if current is None:
        assert cached is None
        with pytest.raises(Author.DoesNotExist):
            Author.objects.get(pk=author.pk)
    else:
        assert current.name == "new"
        assert cached is None or cached.name == current.name
        assert Author.objects.get(pk=author.pk).name == "new"
        settle()
        refilled = cached_row(redis, author.pk)  # the next miss filled the new row
        assert refilled is not None
        assert refilled.name == "new"


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_reader_between_a_write_and_its_commit_cannot_leave_the_old_row(redis, writer):
    # The other order: the write happens first, inside a transaction; the reader
    # takes the lease and loads the still-committed old row; then the commit.
    author = Author.objects.create(name="old", email="old@example.com", slug="old")
    keys = keys_of(Author, author.pk)
    with transaction.atomic():
        WRITERS[writer](models.QuerySet(Author).get(pk=author.pk))
        held = HeldReader(READERS["get-pk"](author), marker="bio")
        held.start()  # its SELECT does not wait for the writer's row lock
        assert redis.get(keys.lease) is not None
    assert redis.exists(keys.lease) == 0  # the commit voided the lease taken before it

    loaded = held.release()
    settle()
    assert loaded.name == "old"
    cached = cached_row(redis, author.pk)
    current = db_row(author.pk)
    assert cached is None or (current is not None and cached.name == current.name == "new")


@pytest.mark.parametrize("writer", ["save", "update", "delete"])
def test_control_without_the_lease_check_the_old_row_lands(redis, monkeypatch, writer):
    # fill_command() reads the script text from this dict when it builds the command.
    monkeypatch.setitem(store_module.SCRIPTS, "fill", FILL_WITHOUT_LEASE_CHECK)
    author, loaded = race(redis, "get-pk", writer)
    assert loaded.name == "old"
    cached = cached_row(redis, author.pk)
    assert cached is not None
    assert cached.name == "old"  # the stale set the real fill script prevents
