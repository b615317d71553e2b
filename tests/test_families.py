"""
Families: every cached page of an author is invalidated, after commit, by any
write that changes what those pages show, in O(1) and without KEYS/SCAN; pages of
other authors stay cached; rolled-back writes invalidate nothing.

A page "stays a hit" when reading it costs no query; it "was invalidated" when
reading it costs the one query of the function (and shows the new data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, models, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside, invalidate, invalidate_family
from tests.support import SQLITE, PrivateRedis, cachepatterns, family_keys, private_redis, settle
from tests.testapp.models import Author, Post, Tag

pytestmark = pytest.mark.django_db(transaction=True)

FAMILY = "author:{author_id}:posts"
PER_PAGE = 3


@cache_aside(
    key="author:{author_id}:posts:page:{page}:size:{per_page}",
    ttl=300,
    family=FAMILY,
    depends_on={Post: "author_id"},
)
def author_posts(author_id: int, page: int = 1, per_page: int = PER_PAGE) -> Any:
    start = (page - 1) * per_page
    return Post.objects.filter(author_id=author_id).select_related("author")[start : start + per_page]


@cache_aside(
    key="editor:{editor_id}:edited",
    ttl=300,
    family="editor:{editor_id}:edited",
    depends_on={Post: "editor_id"},
)
def edited_posts(editor_id: int) -> list[int]:
    return list(Post.objects.filter(editor_id=editor_id).order_by("id").values_list("id", flat=True))


@cache_aside(
    key="tag:{tag_id}:posts:page:{page}", ttl=300, family="tag:{tag_id}:posts", depends_on={Tag: "id"}
)
def tag_posts(tag_id: int, page: int = 1) -> Any:
    start = (page - 1) * PER_PAGE
    return Post.objects.filter(tags=tag_id).order_by("id")[start : start + PER_PAGE]


@cache_aside(key="post:{post_id}:tags", ttl=300, family="post:{post_id}:tags", depends_on={Post: "id"})
def post_tags(post_id: int) -> list[str]:
    return list(Tag.objects.filter(posts=post_id).order_by("name").values_list("name", flat=True))


# -- helpers ------------------------------------------------------------------------------------

Read = Callable[[], Any]


def queries(read: Read) -> int:
    with CaptureQueriesContext(connection) as ctx:
        read()
    return len(ctx.captured_queries)


def page(author: Author, n: int = 1) -> Read:
    return lambda: author_posts(author.pk, page=n)


def pages(author: Author) -> list[Read]:
    """Every page of ``author``, plus one past the end (an empty page is a member too)."""
    count = models.QuerySet(Post).filter(author=author).count()
    return [page(author, n) for n in range(1, count // PER_PAGE + 3)]


def warm(*groups: list[Read] | Read) -> list[Read]:
    """Read everything once, let the fills land, and check it is all cached."""
    reads = [r for g in groups for r in (g if isinstance(g, list) else [g])]
    for read in reads:
        read()
    settle()
    assert [queries(read) for read in reads] == [0] * len(reads), "warm-up did not cache"
    return reads


def assert_invalidated(reads: list[Read]) -> None:
    """Each read is a miss now (one query); afterwards it is cached again."""
    assert [queries(read) for read in reads] == [1] * len(reads)
    settle()


def assert_hits(reads: list[Read]) -> None:
    assert [queries(read) for read in reads] == [0] * len(reads)


def assert_pages_match_db(author: Author) -> None:
    everything = list(models.QuerySet(Post).filter(author=author).values_list("pk", "title"))
    for n in range(1, len(everything) // PER_PAGE + 3):
        got = [(p.pk, p.title) for p in author_posts(author.pk, page=n)]
        assert got == everything[(n - 1) * PER_PAGE : n * PER_PAGE]


def generation(redis: Any, family: str) -> bytes | None:
    return redis.get(family_keys(family).generation)


@pytest.fixture
def blog() -> dict[str, Any]:
    """Four authors with seven posts each (three pages of three), two tags, an editor."""
    authors = {
        name: Author.objects.create(name=name, email=f"{name}@example.com")
        for name in ("ada", "bob", "cid", "dan", "eve")
    }
    eve = authors["eve"]  # edits, writes nothing
    Post.objects.bulk_create(
        [
            Post(author=authors[name], title=f"{name}-{i}", editor=eve if i < 2 else None)
            for name in ("ada", "bob", "cid", "dan")
            for i in range(7)
        ]
    )
    return authors


def post_of(author: Author, i: int = 0) -> Post:
    return models.QuerySet(Post).get(author=author, title=f"{author.name}-{i}")


# -- per-instance writes ------------------------------------------------------------------------


def test_creating_a_post_invalidates_every_page_of_its_author_only(blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))

    new = Post.objects.create(author=ada, title="ada-new")

    assert_invalidated(pages(ada)[:-1])  # the page past the end was a member too
    assert_hits(pages(bob))
    assert author_posts(ada.pk)[0].pk == new.pk
    assert_pages_match_db(ada)


def test_deleting_a_post(blog):
    ada, bob = blog["ada"], blog["bob"]
    ada_pages = warm(pages(ada))
    warm(pages(bob))
    post_of(ada, 6).delete()
    assert_invalidated(ada_pages)
    assert_hits(pages(bob))
    assert_pages_match_db(ada)


@pytest.mark.parametrize("update_fields", [None, ["title"]], ids=["save", "save-update_fields"])
def test_changing_a_post_invalidates_its_owner(blog, update_fields):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    post = post_of(ada, 3)
    post.title = "renamed"
    post.save(update_fields=update_fields)
    assert_invalidated(pages(ada))
    assert_hits(pages(bob))
    assert_pages_match_db(ada)


def test_saving_an_unrelated_field_with_update_fields_still_invalidates_the_owner(blog):
    # The page shows whole posts: any change of a row on it must invalidate it.
    ada = blog["ada"]
    warm(pages(ada))
    post = post_of(ada, 0)
    post.body = "new body"
    post.save(update_fields=["body"])
    assert_invalidated([page(ada, 3)])  # post 0 is the oldest: on the last page
    assert [p.body for p in author_posts(ada.pk, page=3) if p.pk == post.pk] == ["new body"]


@pytest.mark.parametrize("update_fields", [None, ["author"]], ids=["save", "save-update_fields"])
def test_moving_a_post_by_save_invalidates_old_and_new_owner(blog, update_fields):
    ada, bob, cid = blog["ada"], blog["bob"], blog["cid"]
    warm(pages(ada), pages(bob), pages(cid))
    post = post_of(ada, 6)
    post.author = bob
    post.save(update_fields=update_fields)
    assert_invalidated(pages(ada)[:-1])
    assert_invalidated(pages(bob)[:-1])
    assert_hits(pages(cid))
    assert post.pk not in [p.pk for n in range(1, 4) for p in author_posts(ada.pk, page=n)]
    assert post.pk in [p.pk for n in range(1, 4) for p in author_posts(bob.pk, page=n)]
    assert_pages_match_db(ada)
    assert_pages_match_db(bob)


def test_deleting_an_author_cascades_and_invalidates_its_family(redis, blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    models.QuerySet(Author).get(pk=ada.pk).delete()
    assert author_posts(ada.pk) == []
    assert_hits(pages(bob))


# -- bulk writes --------------------------------------------------------------------------------


def test_queryset_update_moving_rows_invalidates_old_and_new_owners_only(blog):
    ada, bob, cid, dan = blog["ada"], blog["bob"], blog["cid"], blog["dan"]
    warm(pages(ada), pages(bob), pages(cid), pages(dan))
    moved = [post_of(ada, 6).pk, post_of(cid, 0).pk]

    assert Post.objects.filter(pk__in=moved).update(author=bob) == 2

    assert_invalidated([page(ada, 1), page(cid, 3)])
    assert_invalidated(pages(bob)[:-1])
    assert_hits(pages(dan))  # the rows were found precisely: dan had none of them
    for author in (ada, bob, cid):
        assert_pages_match_db(author)


def test_queryset_update_filtered_on_the_owner_field(blog):
    ada, bob, cid = blog["ada"], blog["bob"], blog["cid"]
    warm(pages(ada), pages(bob), pages(cid))
    # The filter names the old owner and the update changes it: both must be invalidated.
    assert Post.objects.filter(author=ada, title__in=["ada-5", "ada-6"]).update(author=bob) == 2
    assert_invalidated([page(ada, 1)])
    assert_invalidated([page(bob, 1)])
    assert_hits(pages(cid))
    assert_pages_match_db(ada)
    assert_pages_match_db(bob)


def test_queryset_update_keeping_the_owner(blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    assert Post.objects.filter(author=ada).update(title="same") == 7
    assert_invalidated(pages(ada)[:-1])
    assert_hits(pages(bob))
    assert {p.title for p in author_posts(ada.pk)} == {"same"}


def test_queryset_update_matching_nothing_invalidates_nothing(redis, blog):
    ada = blog["ada"]
    warm(pages(ada))
    before = generation(redis, f"author:{ada.pk}:posts")
    assert Post.objects.filter(author=ada, title="nope").update(author=blog["bob"]) == 0
    assert generation(redis, f"author:{ada.pk}:posts") == before
    assert_hits(pages(ada))


def test_queryset_delete(blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    assert Post.objects.filter(author=ada, title__in=["ada-0", "ada-1"]).delete()[0] >= 2
    assert_invalidated([page(ada, 1)])
    assert_hits(pages(bob))
    assert_pages_match_db(ada)


def test_bulk_create(blog):
    ada, bob, cid = blog["ada"], blog["bob"], blog["cid"]
    warm(pages(ada), pages(bob), pages(cid))
    Post.objects.bulk_create([Post(author=ada, title="ada-new"), Post(author=bob, title="bob-new")])
    assert_invalidated(pages(ada)[:-1])
    assert_invalidated(pages(bob)[:-1])
    assert_hits(pages(cid))
    assert author_posts(ada.pk)[0].title == "ada-new"


def test_bulk_create_upsert_moving_a_row_invalidates_the_old_owner(blog):
    # ON CONFLICT / ON DUPLICATE KEY UPDATE rewrites an existing row: its old owner changes too.
    ada, bob, cid, dan = blog["ada"], blog["bob"], blog["cid"], blog["dan"]
    warm(pages(ada), pages(bob), pages(cid), pages(dan))
    post = post_of(ada, 6)
    options: dict[str, Any] = {"update_conflicts": True, "update_fields": ["author", "title"]}
    if connection.features.supports_update_conflicts_with_target:
        options["unique_fields"] = ["id"]
    # One existing row moved from ada to bob, one new row for cid.
    Post.objects.bulk_create(
        [Post(pk=post.pk, author=bob, title="moved"), Post(author=cid, title="cid-new")], **options
    )
    assert models.QuerySet(Post).get(pk=post.pk).author_id == bob.pk
    assert_invalidated([page(ada, 1), page(bob, 1), page(cid, 1)])
    assert_hits(pages(dan))
    for author in (ada, bob, cid):
        assert_pages_match_db(author)


def test_bulk_update_of_titles(blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    posts = [post_of(ada, 5), post_of(ada, 6)]
    for post in posts:
        post.title += "-edited"
    assert Post.objects.bulk_update(posts, ["title"]) == 2
    assert_invalidated([page(ada, 1)])
    assert_hits(pages(bob))
    assert [p.title for p in author_posts(ada.pk)][:2] == ["ada-6-edited", "ada-5-edited"]


def test_bulk_update_moving_rows(blog):
    ada, bob, cid, dan = blog["ada"], blog["bob"], blog["cid"], blog["dan"]
    warm(pages(ada), pages(bob), pages(cid), pages(dan))
    posts = [post_of(ada, 6), post_of(cid, 6)]
    for post in posts:
        post.author = bob
    assert Post.objects.bulk_update(posts, ["author"]) == 2
    assert_invalidated([page(ada, 1), page(cid, 1), page(bob, 1)])
    assert_hits(pages(dan))
    for author in (ada, bob, cid):
        assert_pages_match_db(author)


# -- transactions -------------------------------------------------------------------------------


class Boom(Exception):
    pass


WRITES: dict[str, Callable[[dict[str, Any]], None]] = {
    "create": lambda b: Post.objects.create(author=b["ada"], title="ada-new") and None,
    "save-move": lambda b: _move_by_save(post_of(b["ada"], 6), b["bob"]),
    "delete": lambda b: post_of(b["ada"], 6).delete() and None,
    "update-move": lambda b: Post.objects.filter(author=b["ada"]).update(author=b["bob"]) and None,
    "queryset-delete": lambda b: Post.objects.filter(author=b["ada"]).delete() and None,
    "bulk_create": lambda b: Post.objects.bulk_create([Post(author=b["ada"], title="x")]) and None,
    "bulk_update-move": lambda b: _bulk_move(post_of(b["ada"], 6), b["bob"]),
    "m2m-add": lambda b: post_of(b["ada"], 6).tags.add(Tag.objects.create(name="new")),
    "invalidate_family": lambda b: invalidate_family(FAMILY, author_id=b["ada"].pk),
    "invalidate-instance": lambda b: invalidate(post_of(b["ada"], 6)),
}


def _move_by_save(post: Post, to: Author) -> None:
    post.author = to
    post.save()


def _bulk_move(post: Post, to: Author) -> None:
    post.author = to
    Post.objects.bulk_update([post], ["author"])


@pytest.mark.parametrize("how", ["raise", "set_rollback"])
@pytest.mark.parametrize("write", list(WRITES))
def test_a_rollback_invalidates_nothing(redis, blog, write, how):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    generations = [generation(redis, f"author:{a.pk}:posts") for a in (ada, bob)]
    rows = sorted(models.QuerySet(Post).values_list("pk", "author_id", "title"))

    if how == "raise":
        with contextlib.suppress(Boom), transaction.atomic():
            WRITES[write](blog)
            raise Boom
    else:
        with transaction.atomic():
            WRITES[write](blog)
            transaction.set_rollback(True)

    assert sorted(models.QuerySet(Post).values_list("pk", "author_id", "title")) == rows
    assert [generation(redis, f"author:{a.pk}:posts") for a in (ada, bob)] == generations
    assert_hits(pages(ada))
    assert_hits(pages(bob))


def test_invalidation_waits_for_the_outermost_commit(redis, blog):
    ada = blog["ada"]
    warm(pages(ada))
    before = generation(redis, f"author:{ada.pk}:posts")
    with transaction.atomic():
        with transaction.atomic():
            Post.objects.create(author=ada, title="ada-new")
        # The savepoint was released, but the transaction is still open.
        assert generation(redis, f"author:{ada.pk}:posts") == before
    assert generation(redis, f"author:{ada.pk}:posts") != before
    assert_invalidated([page(ada, 1)])


@pytest.mark.parametrize("order", ["outer-first", "savepoint-first"])
def test_a_rolled_back_savepoint_invalidates_nothing_for_its_writes(redis, blog, order):
    ada, bob, cid, dan = blog["ada"], blog["bob"], blog["cid"], blog["dan"]
    warm(pages(ada), pages(bob), pages(cid), pages(dan))
    untouched = {a.pk: generation(redis, f"author:{a.pk}:posts") for a in (bob, cid)}

    def rolled_back_savepoint() -> None:
        with contextlib.suppress(Boom), transaction.atomic():
            Post.objects.create(author=bob, title="bob-new")
            Post.objects.filter(author=cid).update(title="cid-renamed")
            raise Boom

    with transaction.atomic():
        if order == "savepoint-first":
            rolled_back_savepoint()
        Post.objects.create(author=ada, title="ada-new")
        if order == "outer-first":
            rolled_back_savepoint()
        with transaction.atomic():  # a released savepoint: its writes commit with the outer block
            post = post_of(dan, 6)
            post.title = "dan-renamed"
            post.save()

    assert {a.pk: generation(redis, f"author:{a.pk}:posts") for a in (bob, cid)} == untouched
    assert_hits(pages(bob))
    assert_hits(pages(cid))
    assert_invalidated([page(ada, 1), page(dan, 1)])
    assert author_posts(ada.pk)[0].title == "ada-new"
    assert author_posts(dan.pk)[0].title == "dan-renamed"


def test_a_read_inside_a_transaction_that_wrote_is_not_cached(blog):
    ada, bob = blog["ada"], blog["bob"]
    with transaction.atomic():
        Post.objects.create(author=ada, title="ada-new")
        # bob's family is not touched by the write, but the transaction has written:
        # what it reads may include uncommitted rows, so nothing it reads is cached.
        assert queries(page(bob, 1)) == 1
        settle()
        assert queries(page(bob, 1)) == 1
    settle()
    assert queries(page(bob, 1)) == 1  # still not cached by the reads above
    settle()
    assert queries(page(bob, 1)) == 0


# -- many-to-many -------------------------------------------------------------------------------


@pytest.fixture
def tagged(blog) -> dict[str, Any]:
    """post1 tagged red and blue; post2 tagged blue; green tags nothing."""
    red, blue, green = (Tag.objects.create(name=name) for name in ("red", "blue", "green"))
    post1, post2, post3 = post_of(blog["ada"], 0), post_of(blog["ada"], 1), post_of(blog["bob"], 0)
    post1.tags.add(red, blue)
    post2.tags.add(blue)
    return {**blog, "red": red, "blue": blue, "green": green, "post1": post1, "post2": post2, "post3": post3}


def _tag(t: Tag) -> Read:
    return lambda: tag_posts(t.pk)


def _post(p: Post) -> Read:
    return lambda: post_tags(p.pk)


def test_m2m_forward_add(tagged):
    t = tagged
    warm(
        _tag(t["red"]),
        _tag(t["green"]),
        _post(t["post2"]),
        _post(t["post3"]),
        pages(t["ada"]),
        pages(t["bob"]),
    )
    t["post2"].tags.add(t["green"])
    assert_invalidated([_tag(t["green"]), _post(t["post2"])])
    assert_invalidated([page(t["ada"], 3)])  # post2's author's pages depend on post2's rows
    assert_hits([_tag(t["red"]), _post(t["post3"]), *pages(t["bob"])])
    assert [p.pk for p in tag_posts(t["green"].pk)] == [t["post2"].pk]
    assert post_tags(t["post2"].pk) == ["blue", "green"]


def test_m2m_forward_remove(tagged):
    t = tagged
    warm(_tag(t["red"]), _tag(t["blue"]), _post(t["post1"]), _post(t["post2"]), pages(t["bob"]))
    t["post1"].tags.remove(t["red"])
    assert_invalidated([_tag(t["red"]), _post(t["post1"])])
    assert_hits([_tag(t["blue"]), _post(t["post2"]), *pages(t["bob"])])
    assert tag_posts(t["red"].pk) == []


def test_m2m_forward_clear(tagged):
    t = tagged
    warm(_tag(t["red"]), _tag(t["blue"]), _tag(t["green"]), _post(t["post1"]), _post(t["post2"]))
    t["post1"].tags.clear()
    assert_invalidated([_tag(t["red"]), _tag(t["blue"]), _post(t["post1"])])
    assert_hits([_tag(t["green"]), _post(t["post2"])])
    assert [p.pk for p in tag_posts(t["blue"].pk)] == [t["post2"].pk]


def test_m2m_forward_set(tagged):
    t = tagged
    warm(_tag(t["red"]), _tag(t["blue"]), _tag(t["green"]), _post(t["post1"]), _post(t["post2"]))
    t["post1"].tags.set([t["blue"], t["green"]])  # removes red, adds green, keeps blue
    assert_invalidated([_tag(t["red"]), _tag(t["green"]), _post(t["post1"])])
    assert_hits([_post(t["post2"])])
    assert post_tags(t["post1"].pk) == ["blue", "green"]


def test_m2m_reverse_add(tagged):
    t = tagged
    warm(
        _tag(t["green"]),
        _tag(t["red"]),
        _post(t["post3"]),
        _post(t["post2"]),
        pages(t["bob"]),
        pages(t["ada"]),
    )
    t["green"].posts.add(t["post3"])
    assert_invalidated([_tag(t["green"]), _post(t["post3"]), page(t["bob"], 3)])
    assert_hits([_tag(t["red"]), _post(t["post2"]), *pages(t["ada"])])
    assert post_tags(t["post3"].pk) == ["green"]


def test_m2m_reverse_remove_and_clear(tagged):
    t = tagged
    warm(_tag(t["blue"]), _tag(t["red"]), _post(t["post1"]), _post(t["post2"]))
    t["blue"].posts.remove(t["post1"])
    assert_invalidated([_tag(t["blue"]), _post(t["post1"])])
    assert_hits([_tag(t["red"]), _post(t["post2"])])
    t["blue"].posts.clear()
    assert_invalidated([_tag(t["blue"]), _post(t["post2"])])
    assert_hits([_tag(t["red"]), _post(t["post1"])])
    assert tag_posts(t["blue"].pk) == []


def test_renaming_a_tag_invalidates_its_family(tagged):
    t = tagged
    warm(_tag(t["red"]), _tag(t["blue"]))
    t["red"].name = "crimson"
    t["red"].save()
    Tag.objects.filter(pk=t["blue"].pk).update(name="navy")
    assert_invalidated([_tag(t["red"]), _tag(t["blue"])])


@pytest.mark.parametrize("deleted", ["post", "tag"])
def test_deleting_a_linked_row_invalidates_the_other_ends_families(tagged, deleted):
    t = tagged
    warm(_tag(t["blue"]), _post(t["post2"]))
    if deleted == "post":
        t["post2"].delete()
        assert_invalidated([_tag(t["blue"])])
        assert [p.pk for p in tag_posts(t["blue"].pk)] == [t["post1"].pk]
    else:
        t["blue"].delete()
        assert_invalidated([_post(t["post2"])])
        assert post_tags(t["post2"].pk) == []


# -- on_delete=SET_NULL -------------------------------------------------------------------------


def test_deleting_an_editor_invalidates_families_depending_on_editor_id(blog):
    ada, bob, eve = blog["ada"], blog["bob"], blog["eve"]
    fay = Author.objects.create(name="fay", email="fay@example.com")
    fays = Post.objects.create(author=bob, title="bob-by-fay", editor=fay)
    edited = [p.pk for p in models.QuerySet(Post).filter(editor=eve).order_by("id")]
    assert len(edited) == 8
    warm(lambda: edited_posts(eve.pk), lambda: edited_posts(fay.pk), pages(ada), pages(blog["cid"]))

    models.QuerySet(Author).get(pk=eve.pk).delete()  # Post.editor is SET_NULL

    assert models.QuerySet(Post).filter(pk__in=edited, editor__isnull=True).count() == 8
    assert_invalidated([lambda: edited_posts(eve.pk)])
    assert edited_posts(eve.pk) == []
    assert_hits([lambda: edited_posts(fay.pk)])
    assert edited_posts(fay.pk) == [fays.pk]
    # The nulled posts are on author pages too: those pages showed editor_id = eve.
    assert_invalidated([page(ada, 3)])
    assert all(p.editor_id is None for p in author_posts(ada.pk, page=3))


# -- O(1), no KEYS/SCAN -------------------------------------------------------------------------

_NOISE = ("info", "ping", "client", "hello", "select", "script", "echo", "command", "auth")


def _calls(server: PrivateRedis) -> dict[str, int]:
    return server.command_calls()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two snapshots, without connection housekeeping."""
    out = {}
    for name, calls in after.items():
        if name.split("|")[0] in _NOISE:
            continue
        if calls - before.get(name, 0):
            out[name] = calls - before.get(name, 0)
    return out


@pytest.fixture
def own_redis() -> Iterator[PrivateRedis]:
    """
    A redis-server of this test's own: INFO commandstats is server-wide, and other
    test runs share the default server. STATS off: the stats flush would add HINCRBYs.
    """
    with private_redis() as server, override_settings(CACHES=server.caches(2.0)), cachepatterns(STATS=False):
        yield server


def test_invalidate_family_is_one_command_whatever_the_number_of_pages(own_redis, blog):
    ada, bob = blog["ada"], blog["bob"]
    one = [page(ada, 1)]
    fifty = [lambda n=n: author_posts(bob.pk, page=n, per_page=1) for n in range(1, 51)]
    warm(one, fifty)
    invalidate_family(FAMILY, author_id=blog["cid"].pk)  # loads the script: not in the windows below
    gens = [int(own_redis.client.get(family_keys(f"author:{a.pk}:posts").generation)) for a in (ada, bob)]

    before = _calls(own_redis)
    invalidate_family(FAMILY, author_id=ada.pk)
    with_one = _delta(before, _calls(own_redis))

    before = _calls(own_redis)
    invalidate_family(FAMILY, author_id=bob.pk)
    with_fifty = _delta(before, _calls(own_redis))

    assert with_one == with_fifty  # the same commands, whatever the number of members
    assert with_one.get("evalsha", 0) + with_one.get("eval", 0) == 1  # one script call
    assert sum(with_one.values()) <= 3  # (and what it runs inside: EXISTS + INCR)
    for forbidden in ("keys", "scan", "del", "unlink"):
        assert forbidden not in with_one
    # Each family moved to the next generation; every member is unreachable now.
    assert [
        int(own_redis.client.get(family_keys(f"author:{a.pk}:posts").generation)) for a in (ada, bob)
    ] == [g + 1 for g in gens]
    assert_invalidated(one)
    assert_invalidated(fifty)


def test_no_keys_or_scan_during_any_invalidation(own_redis, blog):
    ada, bob, cid, eve = blog["ada"], blog["bob"], blog["cid"], blog["eve"]
    red = Tag.objects.create(name="red")
    warm(pages(ada), pages(bob), _tag(red), lambda: edited_posts(eve.pk))

    before = _calls(own_redis)
    Post.objects.create(author=ada, title="new")
    post = post_of(ada, 6)
    post.author = bob
    post.save()
    Post.objects.filter(author=ada).update(title="t")
    Post.objects.filter(author=bob, title="bob-0").update(author=cid)
    Post.objects.bulk_create([Post(author=ada, title="bulk")])
    moved = post_of(bob, 1)
    moved.author = ada
    Post.objects.bulk_update([moved], ["author"])
    post.tags.add(red)
    post.tags.remove(red)
    red.posts.add(post)
    post.tags.clear()
    Post.objects.filter(author=cid).delete()
    post_of(bob, 2).delete()
    models.QuerySet(Author).get(pk=eve.pk).delete()
    with transaction.atomic():
        Post.objects.create(author=ada, title="in a transaction")
        invalidate_family(FAMILY, author_id=bob.pk)
    author_posts.invalidate(author_id=ada.pk, page=1, per_page=PER_PAGE)
    invalidate(post)
    settle()
    during = _delta(before, _calls(own_redis))

    assert "keys" not in during
    assert "scan" not in during
    assert during.get("evalsha", 0) >= 15  # the invalidations did reach this server
    assert_invalidated([page(ada, 1), page(bob, 1), _tag(red)])


# -- the generation key -------------------------------------------------------------------------


def test_a_missing_generation_key_is_a_miss_and_never_resurrects_old_members(redis, blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada), pages(bob))
    keys = family_keys(f"author:{ada.pk}:posts")
    old = int(redis.get(keys.generation))
    old_members = list(redis.scan_iter(match=f"{keys.base}:v:{old}:*"))
    assert len(old_members) == len(pages(ada))

    redis.delete(keys.generation)  # evicted, or flushed by an operator
    # A write while the key is missing has nothing to bump...
    new = Post.objects.create(author=ada, title="ada-new")
    assert redis.exists(keys.generation) == 0

    # ...but the next read starts a new generation, so it is a miss with the new post.
    assert_invalidated([page(ada, 1)])
    assert author_posts(ada.pk)[0].pk == new.pk
    assert int(redis.get(keys.generation)) > old
    assert all(redis.exists(k) for k in old_members)  # still there, unreachable, expiring by TTL
    assert_invalidated(pages(ada)[1:-1])
    assert_hits(pages(bob))


def test_the_generation_key_outlives_its_members(redis, blog):
    ada = blog["ada"]
    warm(pages(ada))
    keys = family_keys(f"author:{ada.pk}:posts")
    generation_ttl = redis.pttl(keys.generation)
    members = list(redis.scan_iter(match=f"{keys.base}:v:*"))
    assert members
    # A member must never outlive the generation it was stored under (it could then be
    # read again under a recreated generation); the generation has a TTL, so it is never leaked.
    assert generation_ttl > max(redis.pttl(k) for k in members)
    assert generation_ttl <= 2 * 300 * 1000 + 10_000


@pytest.mark.skipif(
    SQLITE, reason="select_for_update is a no-op on SQLite; the test is about MariaDB's locks"
)
def test_update_locks_the_rows_it_reads_first(blog):
    ada, bob = blog["ada"], blog["bob"]
    with CaptureQueriesContext(connection) as ctx:
        Post.objects.filter(author=ada).update(author=bob)
    selects = [q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    update = next(
        i for i, q in enumerate(ctx.captured_queries) if q["sql"].lstrip().upper().startswith("UPDATE")
    )
    first_select = next(i for i, q in enumerate(ctx.captured_queries) if q["sql"] == selects[0])
    assert first_select < update
    assert selects[0].rstrip().upper().endswith("FOR UPDATE")


# -- library bugs -------------------------------------------------------------------------------


def test_update_on_a_values_queryset(blog):
    ada, bob = blog["ada"], blog["bob"]
    warm(pages(ada))
    assert Post.objects.filter(author=ada).values("pk").update(author=bob) == 7
    assert_invalidated([page(ada, 1)])
