"""
The stale-page race on a family member, driven step by step.

A reader misses page 1 of an author, takes the page's fill lease under the
family's current generation G and runs its SELECT; an execute wrapper in the
reader's thread holds it right after the SELECT returned the OLD rows. The test
thread then commits a write that changes the page (the family moves to G+1 at
commit). Only then is the reader released: it returns the old page and sends its
fill. That fill must not be stored where readers of G+1 look, so the next call
returns the new page.

A control test runs the same interleaving with a naive fill script (one that
stores the page under whatever generation is current at fill time, i.e. without
checking the generation the page was computed under) and shows the stale page
then IS served: the race is real and the assertions can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, models, transaction
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside
from cachepatterns_app import store as store_module
from tests.support import HeldReader, Worker, family_keys, settle, sqlite_wal, wait_until
from tests.testapp.models import Author, Post

pytestmark = pytest.mark.django_db(transaction=True)

FAMILY = "race:author:{author_id}:posts"


@cache_aside(
    key="race:author:{author_id}:posts:page:{page}:size:{per_page}",
    ttl=300,
    family=FAMILY,
    depends_on={Post: "author_id"},
)
def author_posts(author_id: int, page: int = 1, per_page: int = 3) -> Any:
    start = (page - 1) * per_page
    return Post.objects.filter(author_id=author_id).select_related("author")[start : start + per_page]


# Stores the page under the generation current at fill time: the bug the real
# family_fill.lua prevents by comparing with the generation read before loading.
NAIVE_FAMILY_FILL = """
local gen = redis.call('GET', KEYS[1])
if not gen then
  return 0
end
redis.call('SET', ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2], ARGV[5], 'PX', ARGV[6])
redis.call('DEL', ARGV[1] .. ':l:' .. ARGV[3] .. ':' .. ARGV[2])
return 1
"""


@pytest.fixture(autouse=True)
def _sqlite_wal() -> Iterator[None]:
    with sqlite_wal():
        yield


def rows(page: Any) -> list[tuple[int, str, int, str]]:
    return [(p.pk, p.title, p.author_id, p.author.name) for p in page]


def orm_page(author: Author) -> list[tuple[int, str, int, str]]:
    return rows(models.QuerySet(Post).filter(author=author).select_related("author")[:3])


def queries(read: Callable[[], Any]) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as ctx:
        result = read()
    return len(ctx.captured_queries), result


@pytest.fixture
def blog() -> dict[str, Author]:
    ada = Author.objects.create(name="ada", email="ada@example.com")
    bob = Author.objects.create(name="bob", email="bob@example.com")
    # bob's posts first: ada's are newer, so one moved to bob tops bob's first page.
    for author in (bob, ada):
        for i in range(4):
            Post.objects.create(author=author, title=f"{author.name}-{i}")
    return {"ada": ada, "bob": bob}


def newest(author: Author) -> Post:
    return models.QuerySet(Post).filter(author=author).first()


def _create(b: dict[str, Author]) -> None:
    Post.objects.create(author=b["ada"], title="ada-new")


def _create_in_transaction(b: dict[str, Author]) -> None:
    with transaction.atomic():
        Post.objects.create(author=b["ada"], title="ada-new")


def _update_move_out(b: dict[str, Author]) -> None:
    assert Post.objects.filter(pk=newest(b["ada"]).pk).update(author=b["bob"]) == 1


def _save_move_out(b: dict[str, Author]) -> None:
    post = newest(b["ada"])
    post.author = b["bob"]
    post.save()


def _bulk_update_move_out(b: dict[str, Author]) -> None:
    post = newest(b["ada"])
    post.author = b["bob"]
    assert Post.objects.bulk_update([post], ["author"]) == 1


def _update_title(b: dict[str, Author]) -> None:
    assert Post.objects.filter(pk=newest(b["ada"]).pk).update(title="renamed") == 1


def _delete(b: dict[str, Author]) -> None:
    newest(b["ada"]).delete()


def _update_move_in(b: dict[str, Author]) -> None:
    # The reader reads bob's page; ada's newest post moves in and must appear on it.
    assert Post.objects.filter(pk=newest(b["ada"]).pk).update(author=b["bob"]) == 1


WRITERS: dict[str, tuple[str, Callable[[dict[str, Author]], None]]] = {
    "create": ("ada", _create),
    "create-in-transaction": ("ada", _create_in_transaction),
    "update-move-out": ("ada", _update_move_out),
    "save-move-out": ("ada", _save_move_out),
    "bulk_update-move-out": ("ada", _bulk_update_move_out),
    "update-title": ("ada", _update_title),
    "delete": ("ada", _delete),
    "update-move-in": ("bob", _update_move_in),
}


def race(redis: Any, blog: dict[str, Author], writer: str) -> tuple[Author, list[Any], list[Any], str]:
    """Run the interleaving; return (reader's author, page before, what the reader returned, G)."""
    name, write = WRITERS[writer]
    author = blog[name]
    keys = family_keys(f"race:author:{author.pk}:posts")
    member = author_posts.key(author_id=author.pk, page=1, per_page=3)
    before = orm_page(author)

    held = HeldReader(lambda: rows(author_posts(author.pk)), marker="testapp_post")
    held.start()
    try:
        # The reader is parked after its SELECT, holding the lease of generation G.
        generation = redis.get(keys.generation)
        assert generation is not None
        generation = generation.decode()
        assert redis.get(f"{keys.base}:l:{generation}:{member}") is not None
        assert redis.exists(f"{keys.base}:v:{generation}:{member}") == 0

        write(blog)
        # Committed, and the family moved on at commit, while the reader still holds the old page.
        # (bulk_update bumps twice: its inner update() reports the rows too; harmless.)
        assert int(redis.get(keys.generation)) > int(generation)
        assert orm_page(author) != before
    finally:
        # Even when an assertion above failed: a parked reader would block the teardown.
        loaded = held.release()
    # The reader's fill was sent with CLIENT REPLY SKIP; settle() proves Redis has run it.
    settle()
    return author, before, loaded, generation


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_page_read_before_a_commit_is_not_served_after_it(redis, blog, writer):
    author, before, loaded, generation = race(redis, blog, writer)

    # The interleaving happened: the reader itself returned the page as it was before.
    assert loaded == before

    keys = family_keys(f"race:author:{author.pk}:posts")
    member = author_posts.key(author_id=author.pk, page=1, per_page=3)
    # The fill was refused: stored neither under G nor under the current generation.
    current = redis.get(keys.generation).decode()
    assert current != generation
    assert redis.exists(f"{keys.base}:v:{generation}:{member}") == 0
    assert redis.exists(f"{keys.base}:v:{current}:{member}") == 0

    n, now = queries(lambda: rows(author_posts(author.pk)))
    assert n == 1  # a miss, loaded from the database
    assert now == orm_page(author)
    assert now != before
    settle()
    n, again = queries(lambda: rows(author_posts(author.pk)))
    assert (n, again) == (0, now)


@pytest.mark.parametrize("writer", ["create", "update-move-out"])
def test_control_a_fill_that_ignores_the_generation_serves_the_stale_page(redis, blog, monkeypatch, writer):
    # The decorator reads the script text from this dict each time it sends a fill.
    monkeypatch.setitem(store_module.SCRIPTS, "family_fill", NAIVE_FAMILY_FILL)
    author, before, loaded, generation = race(redis, blog, writer)
    assert loaded == before
    keys = family_keys(f"race:author:{author.pk}:posts")
    member = author_posts.key(author_id=author.pk, page=1, per_page=3)
    # The naive fill landed (and gave its lease back) ...
    assert wait_until(lambda: not redis.exists(f"{keys.base}:l:{generation}:{member}"))
    # ... under the new generation: the stale page is served, with no query.
    n, served = queries(lambda: rows(author_posts(author.pk)))
    assert n == 0
    assert served == before
    assert served != orm_page(author)


def in_another_thread(read: Callable[[], Any]) -> Any:
    worker = Worker(read, name="reader")
    worker.start()
    return worker.result()


def test_a_read_between_a_write_and_its_commit_cannot_leave_the_old_page(redis, blog):
    """Invalidate after commit, never before: a page filled from the old rows meanwhile dies at commit."""
    ada = blog["ada"]
    before = orm_page(ada)
    keys = family_keys(f"race:author:{ada.pk}:posts")
    with transaction.atomic():
        Post.objects.create(author=ada, title="ada-new")
        # Another connection reads the committed (old) rows and caches them.
        assert in_another_thread(lambda: rows(author_posts(ada.pk))) == before
        settle()
        generation = redis.get(keys.generation)
        assert generation is not None
        # Served to other connections until the commit.
        assert in_another_thread(lambda: rows(author_posts(ada.pk))) == before
    assert int(redis.get(keys.generation)) == int(generation) + 1
    n, now = queries(lambda: rows(author_posts(ada.pk)))
    assert n == 1
    assert now == orm_page(ada)
    assert now[0][1] == "ada-new"
