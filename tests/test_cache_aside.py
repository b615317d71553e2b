"""
Cache-aside reads through ``CacheAsideManager``: what is served from Redis, what
passes to the database, and that cached instances are indistinguishable from the
ORM's. Everything runs against the real Redis and the real database.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import pytest
from django.db import connection, models, transaction
from django.db.models import Q
from django.test import override_settings

from tests.support import keys_of, private_redis, settle, unique_key
from tests.testapp.models import Author, AuthorProxy, Document, Everything

pytestmark = pytest.mark.django_db(transaction=True)

M = TypeVar("M", bound=models.Model)

KEY_PREFIX = "cpt"  # tests/settings.py


def orm(model: type[M], **lookup: Any) -> M:
    """Load a row with a plain QuerySet, never through the cache."""
    return models.QuerySet(model).get(**lookup)


def fields_of(instance: models.Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def assert_like_orm(instance: models.Model, model: type[models.Model] | None = None) -> None:
    """Assert ``instance`` equals, field by field, what the ORM loads, with the ORM's state."""
    expected = orm(model or type(instance), pk=instance.pk)
    assert type(instance) is type(expected)
    assert fields_of(instance) == fields_of(expected)
    assert instance._state.adding is False
    assert instance._state.db == "default"


def warm(redis: Any, model: type[models.Model], pk: Any) -> None:
    """Read row ``pk`` once and wait until its fill has landed in Redis."""
    model._default_manager.get(pk=pk)
    settle()
    assert redis.exists(keys_of(model, pk).value) == 1


@pytest.fixture
def ada() -> Author:
    author: Author = Author.objects.create(name="Ada", email="ada@example.com", slug="ada", bio="Analyst")
    return author


# -- hits and misses ---------------------------------------------------------------------


def test_miss_runs_one_query_and_fills_then_hit_runs_none(ada, redis, django_assert_num_queries):
    keys = keys_of(Author, ada.pk)
    assert redis.exists(keys.value) == 0

    with django_assert_num_queries(1):
        first = Author.objects.get(pk=ada.pk)
    settle()
    assert redis.exists(keys.value) == 1
    assert redis.exists(keys.lease) == 0  # the fill consumed its lease
    ttl = redis.pttl(keys.value)
    assert 0 < ttl <= 300 * 1000 * 1.1 + 1  # the manager's ttl=300 with +-10 % jitter

    with django_assert_num_queries(0):
        second = Author.objects.get(pk=ada.pk)
    assert second is not first
    assert_like_orm(first)
    assert_like_orm(second)


@pytest.mark.parametrize(
    ("lookup", "miss_queries"),
    [
        ("pk", 1),
        ("pk__exact", 1),
        ("id", 1),
        ("id__exact", 1),
        # A unique field costs two queries on a miss: its pk, then the row (by pk).
        ("email", 2),
        ("email__exact", 2),
        ("slug", 2),
    ],
)
def test_get_by_pk_and_unique_fields(ada, lookup, miss_queries, django_assert_num_queries):
    value = {"pk": ada.pk, "id": ada.pk, "email": ada.email, "slug": ada.slug}[lookup.split("__")[0]]

    with django_assert_num_queries(miss_queries):
        missed = Author.objects.get(**{lookup: value})
    settle()
    with django_assert_num_queries(0):
        hit = Author.objects.get(**{lookup: value})
    # The queryset path serves the same lookups (an unfiltered all() is still pristine).
    with django_assert_num_queries(0):
        via_queryset = Author.objects.all().get(**{lookup: value})

    for instance in (missed, hit, via_queryset):
        assert instance.pk == ada.pk
        assert_like_orm(instance)


def test_pk_given_as_text_shares_the_key(ada, django_assert_num_queries):
    Author.objects.get(pk=ada.pk)
    settle()
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=str(ada.pk)).pk == ada.pk


def test_uuid_primary_key(redis, django_assert_num_queries):
    doc = Document.objects.create(title="Spec")
    with django_assert_num_queries(1):
        assert Document.objects.get(pk=doc.pk).title == "Spec"
    settle()
    assert redis.exists(keys_of(Document, doc.pk).value) == 1
    # A str, a hex str and a UUID name the same row and the same key.
    for value in (doc.pk, str(doc.pk), doc.pk.hex):
        with django_assert_num_queries(0):
            hit = Document.objects.get(pk=value)
        assert hit.pk == doc.pk
        assert isinstance(hit.pk, uuid.UUID)
        assert_like_orm(hit)


def test_invalid_pk_raises_like_the_orm(django_assert_num_queries):
    with pytest.raises(ValueError) as from_orm:
        models.QuerySet(Author).get(pk="not-a-number")
    with pytest.raises(ValueError) as from_cache:
        Author.objects.get(pk="not-a-number")
    assert type(from_cache.value) is type(from_orm.value)
    with pytest.raises(Document.DoesNotExist), django_assert_num_queries(1):
        Document.objects.get(pk=uuid.uuid4())


def test_instances_from_cache_behave_like_orm_instances(ada, redis):
    warm(redis, Author, ada.pk)
    hit = Author.objects.get(pk=ada.pk)
    assert hit == orm(Author, pk=ada.pk)
    assert hit.joined.tzinfo is not None
    # Saving a cached instance is an UPDATE of the same row, not an INSERT.
    hit.bio = "Poet"
    hit.save()
    assert Author.objects.count() == 1
    assert orm(Author, pk=ada.pk).bio == "Poet"
    # ... and the save invalidated the row.
    assert redis.exists(keys_of(Author, ada.pk).value) == 0
    assert Author.objects.get(pk=ada.pk).bio == "Poet"


# -- queries the cache must not serve -------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(lambda pk: Author.objects.filter(name="Ada").get(pk=pk), id="filter-then-get"),
        pytest.param(lambda pk: Author.objects.filter(pk=pk).get(), id="filter-pk-then-get"),
        pytest.param(lambda pk: Author.objects.get(pk=pk, name="Ada"), id="two-lookups"),
        pytest.param(lambda pk: Author.objects.get(Q(pk=pk)), id="q-object"),
        pytest.param(lambda pk: Author.objects.get(pk__in=[pk]), id="pk-in"),
        pytest.param(lambda pk: Author.objects.get(name="Ada"), id="non-unique-field"),
        pytest.param(lambda pk: Author.objects.select_for_update().get(pk=pk), id="select_for_update"),
        pytest.param(lambda pk: Author.objects.exclude(name="Bob").get(pk=pk), id="exclude"),
        pytest.param(lambda pk: Author.objects.distinct().get(pk=pk), id="distinct"),
    ],
)
def test_other_queries_go_to_the_database(ada, redis, query, django_assert_num_queries):
    warm(redis, Author, ada.pk)
    # Change the row behind the cache's back (raw SQL is out of the app's sight):
    # a query that reaches the database sees the change, the cached get does not.
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Author._meta.db_table} SET bio = %s WHERE id = %s", ["raw", ada.pk])

    with transaction.atomic(), django_assert_num_queries(1):  # atomic: select_for_update needs it
        result = query(ada.pk)
    assert result.pk == ada.pk
    assert result.bio == "raw"
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=ada.pk).bio == "Analyst"


def test_select_related_get_goes_to_the_database(ada, redis, django_assert_num_queries):
    row = Everything.objects.create(char="x", author=ada)
    warm(redis, Everything, row.pk)
    with django_assert_num_queries(1):
        loaded = Everything.objects.select_related("author").get(pk=row.pk)
    # The author came with the row: asking for it costs nothing more.
    with django_assert_num_queries(0):
        assert loaded.author.name == ada.name


@pytest.mark.parametrize(
    ("query", "check"),
    [
        pytest.param(
            lambda pk: Author.objects.only("name").get(pk=pk),
            lambda r: r.get_deferred_fields() == {"email", "slug", "bio", "joined"},
            id="only",
        ),
        pytest.param(
            lambda pk: Author.objects.defer("bio").get(pk=pk),
            lambda r: r.get_deferred_fields() == {"bio"},
            id="defer",
        ),
        pytest.param(
            lambda pk: Author.objects.values().get(pk=pk),
            lambda r: isinstance(r, dict) and r["name"] == "Ada",
            id="values",
        ),
        pytest.param(
            lambda pk: Author.objects.values_list("name", flat=True).get(pk=pk),
            lambda r: r == "Ada",
            id="values_list",
        ),
        pytest.param(
            lambda pk: Author.objects.annotate(n=models.Value(1)).get(pk=pk),
            lambda r: r.n == 1,
            id="annotate",
        ),
    ],
)
def test_partial_rows_pass_through_and_are_never_cached(ada, redis, query, check, django_assert_num_queries):
    with django_assert_num_queries(1):
        result = query(ada.pk)
    assert check(result)
    settle()
    keys = keys_of(Author, ada.pk)
    assert redis.exists(keys.value, keys.lease) == 0
    # ... and once the full row is cached they still go to the database.
    warm(redis, Author, ada.pk)
    with django_assert_num_queries(1):
        assert check(query(ada.pk))


def test_explicit_database_alias(ada, redis, django_assert_num_queries):
    # The suite configures a single database. ``using()`` with the alias the
    # fills come from (the primary) keeps the cache; any other alias is bypassed
    # by ``_default_db()`` and is exercised where a second database is configured.
    warm(redis, Author, ada.pk)
    with django_assert_num_queries(0):
        assert Author.objects.using("default").get(pk=ada.pk)._state.db == "default"
    with django_assert_num_queries(0):
        assert Author.objects.db_manager("default").get(pk=ada.pk).pk == ada.pk


# -- missing rows: nothing is negative-cached ------------------------------------------------


def test_missing_row_raises_every_time_and_caches_nothing(ada, redis, django_assert_num_queries):
    missing = ada.pk + 1000
    keys = keys_of(Author, missing)
    for _ in range(2):
        with pytest.raises(Author.DoesNotExist), django_assert_num_queries(1):
            Author.objects.get(pk=missing)
        settle()
        assert redis.exists(keys.value, keys.lease) == 0

    # Once the row exists it is found at once: no negative entry hides it.
    Author.objects.create(pk=missing, name="Late", email="late@example.com")
    assert Author.objects.get(pk=missing).name == "Late"


def test_missing_unique_value_raises_every_time_and_caches_nothing(ada, redis, django_assert_num_queries):
    pointer = unique_key("testapp.author", "email", "nobody@example.com")
    for _ in range(2):
        with pytest.raises(Author.DoesNotExist), django_assert_num_queries(1):
            Author.objects.get(email="nobody@example.com")
        settle()
        assert redis.exists(pointer) == 0
        assert (
            list(redis.scan_iter(match=f"{KEY_PREFIX}:{{testapp.author:*")) == []
        )  # no pointer, row or lease

    Author.objects.create(name="Nobody", email="nobody@example.com")
    assert Author.objects.get(email="nobody@example.com").name == "Nobody"


def test_unique_pointer_follows_a_changed_value(ada, redis, django_assert_num_queries):
    Author.objects.get(email="ada@example.com")
    settle()
    ada.email = "countess@example.com"
    ada.save()
    # The old value no longer names a row; the new one does.
    with pytest.raises(Author.DoesNotExist):
        Author.objects.get(email="ada@example.com")
    assert Author.objects.get(email="countess@example.com").pk == ada.pk
    # Another row may now take the old value: the stale pointer must not hide it.
    bob = Author.objects.create(name="Bob", email="ada@example.com")
    assert Author.objects.get(email="ada@example.com").pk == bob.pk


# -- get_many ------------------------------------------------------------------------------------


@pytest.fixture
def server():
    """A private Redis, so ``INFO commandstats`` counts only this test's commands."""
    with private_redis() as srv, override_settings(CACHES=srv.caches(socket_timeout=2.0)):
        yield srv


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def test_get_many_one_mget_for_hits_one_select_for_misses(server, django_assert_num_queries):
    authors = [Author.objects.create(name=f"A{i}", email=f"a{i}@example.com") for i in range(6)]
    pks = [a.pk for a in authors]
    for pk in pks[:3]:
        Author.objects.get(pk=pk)
    settle()
    missing = max(pks) + 1000

    before = server.command_calls()
    with django_assert_num_queries(1):
        result = Author.objects.get_many([*pks, missing, pks[0], str(pks[4])])
    settle()
    calls = delta(before, server.command_calls())

    assert list(result) == pks  # missing pk omitted, duplicates (also as text) once
    for pk, instance in result.items():
        assert instance.pk == pk
        assert_like_orm(instance)
    assert calls.get("mget") == 1  # every hit and miss was looked up in one MGET
    assert "evalsha" not in calls  # no per-key read script (fills and lease releases are EVALs)

    # Now everything that exists is cached: a hit-only call is one MGET and no SQL.
    before = server.command_calls()
    with django_assert_num_queries(0):
        again = Author.objects.get_many(pks)
    calls = delta(before, server.command_calls())
    assert list(again) == pks
    assert calls.get("mget") == 1
    # Commands run inside scripts are counted too: none ran, so nothing but the MGET read.
    assert not {"get", "evalsha", "eval", "set"} & set(calls), calls
    for instance in again.values():
        assert_like_orm(instance)


def test_get_many_edge_cases(ada, redis, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert Author.objects.get_many([]) == {}
    with django_assert_num_queries(1):
        assert Author.objects.get_many([ada.pk + 100, ada.pk + 101]) == {}
    settle()
    for pk in (ada.pk + 100, ada.pk + 101):  # no negative entry, and the leases were given back
        assert redis.exists(keys_of(Author, pk).value, keys_of(Author, pk).lease) == 0
    with django_assert_num_queries(1):
        assert list(Author.objects.get_many(iter([ada.pk, ada.pk]))) == [ada.pk]
    settle()
    assert redis.exists(keys_of(Author, ada.pk).value) == 1
    # A filtered queryset is not pristine: get_many falls back to in_bulk.
    with django_assert_num_queries(1):
        assert Author.objects.filter(name="Nobody").get_many([ada.pk]) == {}


# -- proxy models ----------------------------------------------------------------------------------


def test_proxy_shares_the_concrete_models_cache(ada, redis, django_assert_num_queries):
    warm(redis, Author, ada.pk)
    with django_assert_num_queries(0):
        proxied = AuthorProxy.objects.get(pk=ada.pk)
    assert_like_orm(proxied)

    # A write through the proxy invalidates the shared key.
    proxied.name = "Lady Ada"
    proxied.save()
    assert redis.exists(keys_of(Author, ada.pk).value) == 0
    with django_assert_num_queries(1):
        assert AuthorProxy.objects.get(pk=ada.pk).name == "Lady Ada"
    settle()

    # A fill made through the proxy serves the concrete model.
    with django_assert_num_queries(0):
        assert Author.objects.get(pk=ada.pk).name == "Lady Ada"
    with django_assert_num_queries(0):
        assert AuthorProxy.objects.get_many([ada.pk])[ada.pk].name == "Lady Ada"


@pytest.mark.parametrize("warm_first", [False, True], ids=["miss", "hit"])
def test_proxy_reads_return_proxy_instances(ada, redis, warm_first):
    if warm_first:
        warm(redis, Author, ada.pk)
    assert type(models.QuerySet(AuthorProxy).get(pk=ada.pk)) is AuthorProxy  # what the ORM returns
    assert type(AuthorProxy.objects.get(pk=ada.pk)) is AuthorProxy
    assert type(AuthorProxy.objects.get(email=ada.email)) is AuthorProxy
    assert type(AuthorProxy.objects.get_many([ada.pk])[ada.pk]) is AuthorProxy
    settle()
    # The shared entry still builds the class that asks for it.
    assert type(Author.objects.get(pk=ada.pk)) is Author
    assert type(Author.objects.get_many([ada.pk])[ada.pk]) is Author
    assert_like_orm(AuthorProxy.objects.get(pk=ada.pk))
