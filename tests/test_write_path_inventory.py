"""
The write-path inventory (``docs/write-paths.md``) walked against Django itself,
and the paths it lists that no other module proves: fixtures, the async API,
creators on querysets and related managers, and the remaining ``on_delete``s.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db import models
from django.db.models import Model, QuerySet, deletion
from django.db.models.deletion import ProtectedError, RestrictedError
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside
from tests.support import keys_of, settle
from tests.testapp.models import Author, Bowl, Collar, Kennel, Post, Profile, Tag

INVENTORY = Path(__file__).resolve().parent.parent / "docs" / "write-paths.md"


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in INVENTORY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("covered", "out of scope"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def _mentioned() -> set[str]:
    """Every backticked name in the inventory's first column, bare and qualified."""
    out: set[str] = set()
    for path, _, _ in _rows():
        for token in re.findall(r"`([^`]+)`", path):
            token = token.split("(")[0]
            out.add(token)
            out.add(token.rsplit(".", 1)[-1])
    return out


def _altering(cls: type) -> set[str]:
    return {name for name in dir(cls) if getattr(getattr(cls, name, None), "alters_data", False)}


def test_every_data_altering_queryset_and_model_method_is_in_the_inventory():
    mentioned = _mentioned()
    missing = sorted(f"QuerySet.{n}" for n in _altering(QuerySet) if f"QuerySet.{n}" not in mentioned)
    missing += sorted(
        f"Model.{n}" for n in _altering(Model) if f"Model.{n}" not in mentioned and n not in mentioned
    )
    assert not missing, f"add these to docs/write-paths.md: {missing}"


def test_every_related_manager_method_is_in_the_inventory():
    ada, post, tag = Author(pk=1), Post(pk=1), Tag(pk=1)
    mentioned = _mentioned()
    found: set[str] = set()
    for manager in (ada.posts, ada.edited, post.tags, tag.posts):
        cls = type(manager)
        found |= {n for n in vars(cls) if getattr(vars(cls)[n], "alters_data", False)}
    missing = sorted(n for n in found if n not in mentioned and n.removeprefix("a") not in mentioned)
    assert not missing, f"add these related-manager methods to docs/write-paths.md: {missing}"


def test_every_on_delete_handler_is_in_the_inventory():
    mentioned = _mentioned()
    handlers = {n for n in dir(deletion) if n.isupper() and callable(getattr(deletion, n))}
    missing = sorted(n for n in handlers if f"on_delete={n}" not in mentioned)
    assert not missing, f"add these on_delete handlers to docs/write-paths.md: {missing}"


def test_every_proof_the_inventory_names_exists():
    broken = []
    for path, status, proof in _rows():
        tests = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", proof)
        if status == "covered" and not tests:
            broken.append(f"{path}: covered but names no test")
        for file, name in tests:
            module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
            if not callable(getattr(module, name, None)):
                broken.append(f"{path}: {file}::{name} does not exist")
        if status == "out of scope" and not proof:
            broken.append(f"{path}: out of scope without an escape hatch")
    assert not broken, broken


# -- the paths no other module proves ---------------------------------------------------------

db = pytest.mark.django_db(transaction=True)


def run(method: Any, *args: Any, **kwargs: Any) -> Any:
    """Await an async ORM method from this synchronous test, on this thread's connection."""

    async def main() -> Any:
        return await method(*args, **kwargs)

    return async_to_sync(main)()


def queries(fn: Any) -> tuple[int, Any]:
    from django.db import connection

    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return len(ctx.captured_queries), value


def warm_row(model: type[models.Model], pk: Any) -> None:
    model.objects.get(pk=pk)
    settle()
    assert queries(lambda: model.objects.get(pk=pk))[0] == 0


@cache_aside(key="inv:by:{author_id}", depends_on={Post: "author_id"})
def titles_by(author_id: int) -> list[str]:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


@cache_aside(key="inv:tag:{tag_id}", depends_on={Tag: {"tag_id": "id"}})
def titles_tagged(tag_id: int) -> list[str]:
    return sorted(Post.objects.filter(tags=tag_id).values_list("title", flat=True))


@cache_aside(key="inv:bowls:{kennel_id}", depends_on={Bowl: "kennel_id"})
def bowls_in(kennel_id: Any) -> list[str]:
    return sorted(Bowl.objects.filter(kennel_id=kennel_id).values_list("name", flat=True))


@db
def test_loaddata_invalidates_the_rows_it_writes(tmp_path):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    warm_row(Author, ada.pk)
    titles_by(ada.pk)
    settle()
    fixture = tmp_path / "rows.json"
    fixture.write_text(
        json.dumps(
            [
                {
                    "model": "testapp.author",
                    "pk": ada.pk,
                    "fields": {"name": "Ada (fixture)", "email": ada.email, "joined": "2026-01-01T00:00:00Z"},
                },
                {
                    "model": "testapp.post",
                    "pk": 900,
                    "fields": {
                        "author": ada.pk,
                        "title": "from a fixture",
                        "created_at": "2026-01-01T00:00:00Z",
                    },
                },
            ]
        )
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert Author.objects.get(pk=ada.pk).name == "Ada (fixture)"
    assert titles_by(ada.pk) == ["from a fixture"]


@db
def test_async_model_methods_invalidate():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    warm_row(Author, ada.pk)
    ada.name = "Ada 2"
    run(ada.asave)
    assert Author.objects.get(pk=ada.pk).name == "Ada 2"
    settle()
    run(ada.adelete)
    with pytest.raises(Author.DoesNotExist):
        Author.objects.get(pk=ada.pk)


@db
def test_async_queryset_methods_invalidate():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    titles_by(ada.pk)
    settle()
    post = run(Post.objects.acreate, author=ada, title="a")
    assert titles_by(ada.pk) == ["a"]
    settle()
    run(Post.objects.filter(pk=post.pk).aupdate, title="b")
    assert titles_by(ada.pk) == ["b"]
    settle()
    run(Post.objects.aget_or_create, author=ada, title="c")
    assert titles_by(ada.pk) == ["b", "c"]
    settle()
    run(Post.objects.aupdate_or_create, pk=post.pk, defaults={"title": "d"})
    assert titles_by(ada.pk) == ["c", "d"]
    settle()
    run(Post.objects.abulk_create, [Post(author=ada, title="e")])
    assert titles_by(ada.pk) == ["c", "d", "e"]
    settle()
    post.title = "f"
    run(Post.objects.abulk_update, [post], ["title"])
    assert titles_by(ada.pk) == ["c", "e", "f"]
    settle()
    run(Post.objects.filter(title="f").adelete)
    assert titles_by(ada.pk) == ["c", "e"]


@db
@pytest.mark.parametrize("model", [Author, Profile], ids=["cache-aside", "write-through"])
def test_queryset_creators_invalidate(model):
    if model is Author:
        row = Author.objects.create(name="Ada", email="ada@example.com")
        lookup, change = {"email": "ada@example.com"}, {"name": "Ada 2"}
    else:
        row = Profile.objects.create(handle="ann", name="Ann")
        lookup, change = {"handle": "ann"}, {"name": "Ann 2"}
    warm_row(model, row.pk)
    _, created = model.objects.update_or_create(**lookup, defaults=change)
    assert not created
    assert model.objects.get(pk=row.pk).name == change["name"]
    assert model.objects.get(**lookup).name == change["name"]
    settle()
    again, created = model.objects.get_or_create(**lookup)
    assert (again.pk, created) == (row.pk, False)


@db
def test_related_manager_creators_invalidate():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    tag = Tag.objects.create(name="t")
    titles_by(ada.pk)
    titles_tagged(tag.pk)
    settle()
    post = ada.posts.create(title="a")
    assert titles_by(ada.pk) == ["a"]
    settle()
    ada.posts.get_or_create(title="b")
    assert titles_by(ada.pk) == ["a", "b"]
    settle()
    ada.posts.update_or_create(pk=post.pk, defaults={"title": "c"})
    assert titles_by(ada.pk) == ["b", "c"]
    # On a many-to-many manager each creator also links the new row.
    tag.posts.create(author=ada, title="tagged")
    assert titles_tagged(tag.pk) == ["tagged"]
    settle()
    tag.posts.get_or_create(author=ada, title="tagged 2")
    assert titles_tagged(tag.pk) == ["tagged", "tagged 2"]
    settle()
    tag.posts.update_or_create(author=ada, title="tagged 3", defaults={"body": "x"})
    assert titles_tagged(tag.pk) == ["tagged", "tagged 2", "tagged 3"]


@db
def test_async_related_manager_methods_invalidate():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    bob = Author.objects.create(name="Bob", email="bob@example.com")
    tag = Tag.objects.create(name="t")
    post = Post.objects.create(author=bob, title="bob's")
    titles_by(ada.pk)
    titles_tagged(tag.pk)
    settle()
    run(ada.posts.aadd, post)
    assert titles_by(ada.pk) == ["bob's"]
    run(tag.posts.aadd, post)
    assert titles_tagged(tag.pk) == ["bob's"]
    settle()
    run(tag.posts.aremove, post)
    assert titles_tagged(tag.pk) == []
    settle()
    run(tag.posts.aset, [post])
    assert titles_tagged(tag.pk) == ["bob's"]
    settle()
    run(tag.posts.aclear)
    assert titles_tagged(tag.pk) == []
    settle()
    run(ada.posts.acreate, title="new")
    assert titles_by(ada.pk) == ["bob's", "new"]


@db
def test_set_default_and_set_rewrite_cached_children(redis):
    kennel = Kennel.objects.create(name="k")
    by_default = Bowl.objects.create(kennel=kennel, name="a")
    by_set = Bowl.objects.create(spare_for=kennel, name="b")
    for bowl in (by_default, by_set):
        warm_row(Bowl, bowl.pk)
    kennel_pk = kennel.pk
    assert bowls_in(kennel_pk) == ["a"]
    settle()
    kennel.delete()
    assert Bowl.objects.get(pk=by_default.pk).kennel_id is None
    assert Bowl.objects.get(pk=by_set.pk).spare_for_id is None
    assert bowls_in(kennel_pk) == []
    assert bowls_in(None) == ["a", "b"]


@db
def test_protect_and_restrict_change_nothing(redis):
    kennel = Kennel.objects.create(name="k")
    owner = Author.objects.create(name="Ada", email="ada@example.com")
    collar = Collar.objects.create(owner=owner, kennel=kennel, name="red")
    warm_row(Collar, collar.pk)
    warm_row(Author, owner.pk)
    with pytest.raises(ProtectedError):
        owner.delete()
    with pytest.raises(RestrictedError):
        kennel.delete()
    assert queries(lambda: Collar.objects.get(pk=collar.pk).name) == (0, "red")
    assert Author.objects.get(pk=owner.pk).name == "Ada"
    assert redis.exists(keys_of(Collar, collar.pk).value) == 1
