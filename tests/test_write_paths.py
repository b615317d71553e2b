"""
Every write path (issue 8): the scenarios django-cachalot's and django-cacheops'
own test suites write with, replayed on this app's API against real commits.
Each one served stale or wrong data, or raised after the write committed, before
the write path was rebuilt around ``RowChange``.

``docs/write-paths.md`` lists every way Django can change a row and the test here
(or elsewhere) that proves it; ``test_write_path_inventory`` keeps that list honest.
"""

from __future__ import annotations

import decimal
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection, connections, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat, Upper
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside, write_through
from cachepatterns_app.batch import Batch
from cachepatterns_app.registry import row_cache_for
from tests.support import Worker, keys_of, settle
from tests.testapp.fields import HAS_DB_ON_DELETE
from tests.testapp.models import (
    Account,
    Author,
    BusinessAccount,
    CachedMedia,
    Car,
    Cat,
    Dog,
    Kennel,
    Ledger,
    Media,
    Membership,
    Post,
    Profile,
    Puppy,
    Tag,
    Team,
    Truck,
    Vehicle,
)

pytestmark = pytest.mark.django_db(transaction=True)


def queries(fn: Callable[[], Any]) -> tuple[int, Any]:
    with CaptureQueriesContext(connections["default"]) as ctx:
        value = fn()
    return len(ctx.captured_queries), value


def cached(model: type[models.Model], pk: Any) -> Any:
    """Read a row through the cache after the fills landed; it must be a hit."""
    settle()
    n, row = queries(lambda: model.objects.get(pk=pk))
    assert n == 0, f"{model.__name__} pk={pk} was not cached"
    return row


def fresh(model: type[models.Model], pk: Any) -> Any:
    return models.QuerySet(model).get(pk=pk)


def assert_same_row(got: models.Model, expected: models.Model) -> None:
    """Field by field, value and type: what a hit returns is what the ORM returns."""
    for field in type(expected)._meta.concrete_fields:
        a, b = getattr(got, field.attname), getattr(expected, field.attname)
        assert (a, type(a)) == (b, type(b)), field.attname
        if isinstance(b, decimal.Decimal):
            assert str(a) == str(b), field.attname


# -- 1. multi-table inheritance, parent -> child -------------------------------------------------


PARENT_WRITES: dict[str, Callable[[Any], Any]] = {
    "save": lambda pk: _renamed(Vehicle.objects.get(pk=pk)),
    "update": lambda pk: Vehicle.objects.filter(pk=pk).update(name="renamed"),
    "bulk_update": lambda pk: Vehicle.objects.bulk_update([Vehicle(pk=pk, name="renamed")], ["name"]),
}


def _renamed(vehicle: Vehicle) -> None:
    vehicle.name = "renamed"
    vehicle.save()


@pytest.mark.parametrize("write", list(PARENT_WRITES))
@pytest.mark.parametrize("child", [Car, Truck], ids=["cache-aside", "write-through"])
def test_a_parent_write_reaches_the_cached_child(redis, write, child):
    row = child.objects.create(name="first")
    child.objects.get(pk=row.pk)
    cached(child, row.pk)
    PARENT_WRITES[write](row.pk)
    got = child.objects.get(pk=row.pk)
    assert got.name == "renamed"
    assert_same_row(got, fresh(child, row.pk))


@pytest.mark.parametrize("write", list(PARENT_WRITES))
def test_a_parent_write_gives_a_write_through_child_a_newer_version(redis, write):
    truck = Truck.objects.create(name="first")
    Truck.objects.get(pk=truck.pk)
    before = cached(Truck, truck.pk).version
    PARENT_WRITES[write](truck.pk)
    # In the database, so that a put of the older copy still on its way is refused...
    assert fresh(Truck, truck.pk).version == before + 1
    # ...and in the cache: the re-read put landed, so the next read is a free hit.
    got = cached(Truck, truck.pk)
    assert (got.name, got.version) == ("renamed", before + 1)


def test_a_late_put_of_the_child_from_before_the_parent_write_is_refused(redis):
    truck = Truck.objects.create(name="first")
    cache = row_cache_for(Truck)
    old = fresh(Truck, truck.pk)
    late = cache.put_command(keys_of(Truck, truck.pk), int(old.version), cache.encode(old))
    _renamed(Vehicle.objects.get(pk=truck.pk))
    settle()
    from cachepatterns_app.store import get_store

    assert get_store().pipeline([late]) == [0]
    assert cached(Truck, truck.pk).name == "renamed"


def test_a_write_through_parents_save_refreshes_the_cached_child(redis):
    account = BusinessAccount.objects.create(name="acme", vat="x")
    BusinessAccount.objects.get(pk=account.pk)
    cached(BusinessAccount, account.pk)
    parent = Account.objects.get(pk=account.pk)
    parent.name = "acme 2"
    parent.save()
    got = BusinessAccount.objects.get(pk=account.pk)
    assert (got.name, got.vat) == ("acme 2", "x")
    assert_same_row(got, fresh(BusinessAccount, account.pk))


def test_inside_a_transaction_a_child_read_sees_the_parents_write(redis):
    car = Car.objects.create(name="first")
    Car.objects.get(pk=car.pk)
    cached(Car, car.pk)
    with transaction.atomic():
        _renamed(Vehicle.objects.get(pk=car.pk))
        assert Car.objects.get(pk=car.pk).name == "renamed"
    assert Car.objects.get(pk=car.pk).name == "renamed"


# -- 2. a cache on a proxy of a plain model ------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda pk: _retitled(Media.objects.get(pk=pk)), id="save"),
        pytest.param(lambda pk: Media.objects.filter(pk=pk).update(title="new"), id="update"),
        pytest.param(
            lambda pk: Media.objects.bulk_update([Media(pk=pk, title="new")], ["title"]), id="bulk_update"
        ),
        pytest.param(lambda pk: Media.objects.get(pk=pk).delete(), id="delete"),
        pytest.param(lambda pk: Media.objects.filter(pk=pk).delete(), id="queryset-delete"),
    ],
)
def test_writes_through_the_concrete_model_reach_a_proxys_cache(redis, write):
    media = Media.objects.create(title="old")
    CachedMedia.objects.get(pk=media.pk)
    cached(CachedMedia, media.pk)
    write(media.pk)
    assert redis.exists(keys_of(CachedMedia, media.pk).value) == 0
    rows = list(models.QuerySet(Media).filter(pk=media.pk).values_list("title", flat=True))
    if rows:
        assert CachedMedia.objects.get(pk=media.pk).title == rows[0] == "new"
    else:
        with pytest.raises(CachedMedia.DoesNotExist):
            CachedMedia.objects.get(pk=media.pk)


def _retitled(media: Media) -> None:
    media.title = "new"
    media.save()


# -- 3. related managers and link models ---------------------------------------------------------


@cache_aside(key="wp:by:{author_id}", depends_on={Post: "author_id"})
def titles_by(author_id: int) -> list[str]:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


@cache_aside(key="wp:edited:{editor_id}", depends_on={Post: "editor_id"})
def titles_edited(editor_id: int) -> list[str]:
    return sorted(Post.objects.filter(editor_id=editor_id).values_list("title", flat=True))


@cache_aside(key="wp:tag:{tag_id}", depends_on={Tag: {"tag_id": "id"}})
def titles_tagged(tag_id: int) -> list[str]:
    return sorted(Post.objects.filter(tags=tag_id).values_list("title", flat=True))


@pytest.fixture
def people() -> dict[str, Any]:
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    bob = Author.objects.create(name="Bob", email="bob@example.com")
    post = Post.objects.create(author=bob, title="bob's")
    return {"ada": ada, "bob": bob, "post": post}


def _warm(*reads: Callable[[], Any]) -> None:
    for read in reads:
        read()
    settle()
    assert all(queries(read)[0] == 0 for read in reads)


@pytest.mark.parametrize("bulk", [True, False])
def test_reverse_foreign_key_add_invalidates_old_and_new_owner(people, bulk):
    ada, bob, post = people["ada"], people["bob"], people["post"]
    _warm(lambda: titles_by(ada.pk), lambda: titles_by(bob.pk))
    ada.posts.add(post, bulk=bulk)
    assert (titles_by(ada.pk), titles_by(bob.pk)) == (["bob's"], [])


@pytest.mark.parametrize("bulk", [True, False])
def test_reverse_foreign_key_set_remove_and_clear_invalidate(people, bulk):
    ada, post = people["ada"], people["post"]
    other = Post.objects.create(author=ada, title="ada's")
    _warm(lambda: titles_edited(ada.pk))
    ada.edited.set([post, other], bulk=bulk)
    assert titles_edited(ada.pk) == ["ada's", "bob's"]
    settle()
    ada.edited.remove(post, bulk=bulk)
    assert titles_edited(ada.pk) == ["ada's"]
    settle()
    ada.edited.clear(bulk=bulk)
    assert titles_edited(ada.pk) == []


LINK_WRITES: dict[str, Callable[[Post, Tag], Any]] = {
    "create": lambda post, tag: Post.tags.through.objects.create(post=post, tag=tag),
    "bulk_create": lambda post, tag: Post.tags.through.objects.bulk_create(
        [Post.tags.through(post=post, tag=tag)]
    ),
}


@pytest.mark.parametrize("write", list(LINK_WRITES))
def test_writing_a_link_row_directly_invalidates_its_ends(people, write):
    post = people["post"]
    tag = Tag.objects.create(name="t")
    _warm(lambda: titles_tagged(tag.pk))
    LINK_WRITES[write](post, tag)
    assert titles_tagged(tag.pk) == ["bob's"]


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(
            lambda post, tag, other: Post.tags.through.objects.filter(tag=tag).delete(), id="queryset-delete"
        ),
        pytest.param(
            lambda post, tag, other: Post.tags.through.objects.filter(tag=tag).update(tag=other),
            id="queryset-update",
        ),
    ],
)
def test_rewriting_link_rows_directly_invalidates_both_ends(people, write):
    post = people["post"]
    tag, other = Tag.objects.create(name="t"), Tag.objects.create(name="u")
    post.tags.add(tag)
    _warm(lambda: titles_tagged(tag.pk), lambda: titles_tagged(other.pk))
    write(post, tag, other)
    assert titles_tagged(tag.pk) == []
    assert titles_tagged(other.pk) == list(Post.objects.filter(tags=other).values_list("title", flat=True))


def test_m2m_add_through_the_adopted_link_manager_is_reported_once(people):
    post = people["post"]
    tag = Tag.objects.create(name="t")
    _warm(lambda: titles_tagged(tag.pk))
    with CaptureQueriesContext(connections["default"]) as ctx:
        post.tags.add(tag)
    assert titles_tagged(tag.pk) == ["bob's"]
    # The link rows report themselves; m2m_changed stays quiet: each end is read once.
    tag_reads = [
        q for q in ctx.captured_queries if q["sql"].startswith("SELECT") and "testapp_tag" in q["sql"]
    ]
    assert len(tag_reads) == 1, ctx.captured_queries


@cache_aside(key="wp:team:{team_id}", depends_on={Team: {"team_id": "id"}})
def team_members(team_id: int) -> list[str]:
    return sorted(Author.objects.filter(teams=team_id).values_list("name", flat=True))


CUSTOM_LINK_WRITES: dict[str, Callable[[Team, Author], Any]] = {
    "add": lambda team, author: team.members.add(author),
    "create": lambda team, author: Membership.objects.create(team=team, author=author),
    "save": lambda team, author: Membership(team=team, author=author).save(),
    "bulk_create": lambda team, author: Membership.objects.bulk_create(
        [Membership(team=team, author=author)]
    ),
}


@pytest.mark.parametrize("write", list(CUSTOM_LINK_WRITES))
def test_writing_a_custom_link_row_invalidates_its_ends(people, write):
    team = Team.objects.create(name="t")
    _warm(lambda: team_members(team.pk))
    CUSTOM_LINK_WRITES[write](team, people["ada"])
    assert team_members(team.pk) == ["Ada"]


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda team, other: Membership.objects.get(team=team).delete(), id="instance-delete"),
        pytest.param(lambda team, other: Membership.objects.filter(team=team).delete(), id="queryset-delete"),
        pytest.param(
            lambda team, other: Membership.objects.filter(team=team).update(team=other), id="update"
        ),
        pytest.param(lambda team, other: team.members.clear(), id="clear"),
        pytest.param(lambda team, other: team.delete(), id="delete-an-end"),
    ],
)
def test_removing_a_custom_link_row_invalidates_its_ends(people, write):
    team, other = Team.objects.create(name="t"), Team.objects.create(name="u")
    team_pk = team.pk
    team.members.add(people["ada"])
    _warm(lambda: team_members(team_pk), lambda: team_members(other.pk))
    write(team, other)
    assert team_members(team_pk) == []
    assert team_members(other.pk) == list(Author.objects.filter(teams=other).values_list("name", flat=True))


# -- 4. database-level on_delete (Django 6.1) -------------------------------------------------

needs_db_on_delete = pytest.mark.skipif(not HAS_DB_ON_DELETE, reason="DB_CASCADE/DB_SET_NULL need Django 6.1")


@pytest.mark.parametrize("db_level", [pytest.param(True, marks=needs_db_on_delete), False])
def test_rows_the_database_cascades_are_invalidated(redis, db_level):
    kennel = Kennel.objects.create(name="k")
    dog = Dog.objects.create(kennel=kennel, name="rex")
    puppy = Puppy.objects.create(dog=dog, name="bit")
    cat = Cat.objects.create(kennel=kennel, name="tom")
    for model, pk in ((Dog, dog.pk), (Puppy, puppy.pk), (Cat, cat.pk)):
        model.objects.get(pk=pk)
        cached(model, pk)
    kennel.delete()
    with pytest.raises(Dog.DoesNotExist):
        Dog.objects.get(pk=dog.pk)
    with pytest.raises(Puppy.DoesNotExist):
        Puppy.objects.get(pk=puppy.pk)
    assert Cat.objects.get(pk=cat.pk).kennel_id is None
    assert fresh(Cat, cat.pk).kennel_id is None


# -- 5. expressions ---------------------------------------------------------------------------


@cache_aside(key="wp:titled:{title}", depends_on={Post: "title"})
def posts_titled(title: str) -> list[int]:
    return sorted(Post.objects.filter(title=title).values_list("pk", flat=True))


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param(lambda: Upper("title"), id="Upper"),
        pytest.param(lambda: Concat(F("title"), Value("!")), id="Concat"),
    ],
)
@pytest.mark.parametrize("how", ["save", "bulk_update"])
def test_an_expression_in_a_depends_on_attribute_invalidates_old_and_new_values(people, expression, how):
    post = people["post"]
    _warm(lambda: posts_titled("bob's"))
    post.title = expression()
    if how == "save":
        post.save()
    else:
        Post.objects.bulk_update([post], ["title"])
    new = fresh(Post, post.pk).title
    assert new in ("BOB'S", "bob's!")
    for title in ("bob's", new):
        in_db = models.QuerySet(Post).filter(title=title).values_list("pk", flat=True)
        assert posts_titled(title) == sorted(in_db)
    assert posts_titled(new) == [post.pk]


def test_a_write_through_save_of_an_expression_caches_the_stored_value(redis):
    ann = Profile.objects.create(handle="ann", name="Ann")
    ann.name = Upper("name")
    ann.save()
    got = cached(Profile, ann.pk)
    assert got.name == "ANN"
    assert b"Upper" not in redis.get(keys_of(Profile, ann.pk).value)


def test_a_write_through_save_of_an_f_expression_inside_a_transaction(redis):
    ann = Profile.objects.create(handle="ann", name="Ann", score=1)
    with transaction.atomic():
        ann.score = F("score") + 41
        ann.save()
    assert_same_row(cached(Profile, ann.pk), fresh(Profile, ann.pk))
    assert fresh(Profile, ann.pk).score == 42


# -- 6. write-through stores what the database stored -----------------------------------------


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"amount": decimal.Decimal("0.125")}, id="decimal-rounded"),
        pytest.param({"amount": decimal.Decimal("2.675")}, id="decimal-half"),
        pytest.param({"amount": decimal.Decimal("7")}, id="decimal-padded"),
        pytest.param({"amount": "3.5"}, id="decimal-text"),
        pytest.param({"code": "MiXeD Case"}, id="normalising-field"),
        pytest.param({"data": {"b": 1, "a": [1.0, {"z": None, "y": 2}]}}, id="json"),
    ],
)
def test_write_through_caches_exactly_what_a_fresh_read_returns(redis, values, atomic):
    ledger = Ledger.objects.create(code="start")
    for name, value in values.items():
        setattr(ledger, name, value)
    if atomic:
        with transaction.atomic():
            ledger.save()
    else:
        ledger.save()
    assert_same_row(cached(Ledger, ledger.pk), fresh(Ledger, ledger.pk))


def test_write_through_create_caches_exactly_what_a_fresh_read_returns(redis):
    ledger = Ledger.objects.create(code="NEW", amount=decimal.Decimal("0.125"))
    Ledger.objects.get(pk=ledger.pk)
    assert_same_row(cached(Ledger, ledger.pk), fresh(Ledger, ledger.pk))


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
def test_a_save_that_fails_leaves_the_version_an_integer(atomic):
    Profile.objects.create(handle="taken", name="x")
    ann = Profile.objects.create(handle="ann", name="Ann")
    version = ann.version
    ann.handle = "taken"

    def save() -> None:
        if atomic:
            with transaction.atomic():
                ann.save()
        else:
            ann.save()

    with pytest.raises(IntegrityError):
        save()
    assert isinstance(ann.version, int)
    assert ann.version == version == fresh(Profile, ann.pk).version
    ann.handle = "ann2"
    ann.save()
    assert (ann.version, fresh(Profile, ann.pk).version) == (version + 1, version + 1)


# -- 7. @write_through family puts are ordered ------------------------------------------------


@cache_aside(key="wp:page:{author_id}", family="wp:posts:{author_id}", depends_on={Post: "author_id"})
def page_of(author_id: int) -> list[str]:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


_hold = {"computed": threading.Event(), "go": threading.Event(), "hold": False}


@write_through(key="wp:page:{author_id}", family="wp:posts:{author_id}")
def add_post(author_id: int, title: str) -> list[str]:
    Post.objects.create(author_id=author_id, title=title)
    page = sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))
    if _hold["hold"] and threading.current_thread().name == "held-writer":
        _hold["computed"].set()
        assert _hold["go"].wait(15)
    return page


def test_an_older_write_through_page_never_wins(people):
    ada = people["ada"]
    _warm(lambda: page_of(ada.pk))
    _hold.update(hold=True)
    _hold["computed"].clear()
    _hold["go"].clear()
    held = Worker(lambda: add_post(ada.pk, "first"), name="held-writer")
    held.start()
    assert _hold["computed"].wait(15)  # its page holds "first" only
    try:
        assert add_post(ada.pk, "second") == ["first", "second"]
    finally:
        _hold["go"].set()
        held.result()
        _hold.update(hold=False)
    settle()
    assert page_of(ada.pk) == ["first", "second"]


_state = {"value": "v0"}


@cache_aside(key="wp:plain:{x}", family="wp:plain:{x}:f")
def read_plain(x: int) -> str:
    return _state["value"]


@write_through(key="wp:plain:{x}", family="wp:plain:{x}:f")
def write_plain(x: int, value: str) -> str:
    _state["value"] = value
    if _hold["hold"] and threading.current_thread().name == "held-writer":
        _hold["computed"].set()
        assert _hold["go"].wait(15)
    return value


def test_two_interleaved_writers_without_own_bumps_leave_no_stale_page():
    assert read_plain(1) == "v0"
    settle()
    _hold.update(hold=True)
    _hold["computed"].clear()
    _hold["go"].clear()
    held = Worker(lambda: write_plain(1, "v1"), name="held-writer")
    held.start()
    assert _hold["computed"].wait(15)
    try:
        write_plain(1, "v2")
        _state["value"] = "v1"  # the held writer wrote last in the "database"
    finally:
        _hold["go"].set()
        held.result()
        _hold.update(hold=False)
    settle()
    assert read_plain(1) == "v1"  # refused and invalidated: recomputed, not v2 from the cache


# -- 8. on-commit order -------------------------------------------------------------------------


def test_an_on_commit_hook_registered_before_the_write_reads_the_new_row(people):
    ada = people["ada"]
    Author.objects.get(pk=ada.pk)
    cached(Author, ada.pk)
    seen: list[str] = []
    with transaction.atomic():
        transaction.on_commit(lambda: seen.append(Author.objects.get(pk=ada.pk).name))
        ada.name = "Ada 2"
        ada.save()
        hooks = connections["default"].run_on_commit
        assert isinstance(getattr(hooks[0][1], "__self__", None), Batch)
    assert seen == ["Ada 2"]


def test_hooks_at_inner_savepoints_still_run_after_ours(people):
    ada = people["ada"]
    Author.objects.get(pk=ada.pk)
    cached(Author, ada.pk)
    seen: list[str] = []
    with transaction.atomic():
        transaction.on_commit(lambda: seen.append(Author.objects.get(pk=ada.pk).name))
        with transaction.atomic():
            ada.name = "Ada 2"
            ada.save()
        with pytest.raises(RuntimeError):
            _save_and_fail(ada)
    assert seen == ["Ada 2"]
    assert Author.objects.get(pk=ada.pk).name == "Ada 2"


def _save_and_fail(author: Author) -> None:
    with transaction.atomic():
        author.name = "rolled back"
        author.save()
        raise RuntimeError


@pytest.mark.skipif(
    connection.vendor not in ("mysql", "postgresql"),
    reason="only MySQL (LAST_INSERT_ID) and PostgreSQL (RETURNING) return the version in the UPDATE's reply",
)
def test_plain_fields_are_put_from_memory_without_reading_back(redis):
    ann = Profile.objects.create(handle="ann", name="Ann")
    ann.name = "Ann 2"
    n, _ = queries(ann.save)
    assert n == 1, f"a model of plain fields needs no read-back on {connection.vendor}"
    assert cached(Profile, ann.pk).name == "Ann 2"


@pytest.mark.skipif(not connection.features.has_select_for_update, reason="no row locks (SQLite)")
def test_the_rows_a_write_locks_first_are_locked_in_key_order():
    """
    Two writers that lock overlapping rows in different orders can deadlock (PostgreSQL
    locks a bitmap scan's rows in heap order): every ``SELECT … FOR UPDATE`` a write
    path issues before writing orders by primary key.
    """
    from tests.testapp.models import Author as Writer
    from tests.testapp.models import Post as Article

    ada = Writer.objects.create(name="Ada", email="ada-lock@example.com")
    for i in range(3):
        Article.objects.create(author=ada, title=f"p{i}")
    with CaptureQueriesContext(connection) as ctx:
        Writer.objects.filter(name="Ada").update(name="Ada L.")
        Article.objects.filter(author=ada).order_by("-title").update(title="moved")
        Article.objects.filter(author=ada).update(author=ada)
    locking = [q["sql"] for q in ctx.captured_queries if "FOR UPDATE" in q["sql"]]
    assert locking, "the write paths lock their rows first"
    for sql in locking:
        assert "ORDER BY" in sql, sql
