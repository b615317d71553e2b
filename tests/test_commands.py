"""cachepatterns_stats and cachepatterns_invalidate (the other commands: test_operations_commands)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from cachepatterns_app import cache_aside
from tests.support import keys_of, settle
from tests.testapp.models import Author, Post

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_stats_prints_per_label_counts_and_hit_rate():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    Author.objects.get(pk=ada.pk)
    settle()
    Author.objects.get(pk=ada.pk)
    table = run("cachepatterns_stats")
    row = next(line for line in table.splitlines() if line.startswith("testapp.author"))
    assert row.endswith("50.0 %")
    assert "model    cache-aside" in row
    data = json.loads(run("cachepatterns_stats", "--json"))
    assert data["labels"]["testapp.author"]["events"]["hit"] == 1
    assert data["labels"]["testapp.author"]["events"]["miss"] == 1
    assert data["labels"]["testapp.author"]["hit_rate"] == 0.5


def test_invalidate_rows_by_primary_key(redis):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    Author.objects.get(pk=ada.pk)
    settle()
    assert redis.exists(keys_of(Author, ada.pk).value)
    assert "Invalidated 1 testapp.Author row(s)." in run(
        "cachepatterns_invalidate", "testapp.Author", str(ada.pk)
    )
    assert not redis.exists(keys_of(Author, ada.pk).value)


@cache_aside(key="cmd:{author_id}", family="cmd:{author_id}:f", depends_on={Post: "author_id"})
def titles(author_id: int) -> list[str]:
    return list(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


def test_invalidate_a_family_by_parameters(django_assert_num_queries):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    titles(ada.pk)
    settle()
    run("cachepatterns_invalidate", "--family", "cmd:{author_id}:f", f"author_id={ada.pk}")
    with django_assert_num_queries(1):
        titles(ada.pk)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "is not a model"),
        (["testapp.Post", "1"], "is not cached"),
        ([], "Name a model"),
        (["testapp.Author", "--param", "a=1"], "--param goes with --family"),
        (["--family", "cmd:{author_id}:f", "--param", "author_id"], "name=value"),
        (["--family", "cmd:{author_id}:f", "author_id"], "name=value"),
        (["--family", "cmd:{author_id}:f", "other=1"], "needs parameter 'author_id'"),
    ],
)
def test_invalidate_explains_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("cachepatterns_invalidate", *args, stdout=StringIO())


def test_invalidate_says_when_redis_was_down():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    down = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    with override_settings(CACHES=down), pytest.raises(CommandError, match="recorded"):
        call_command("cachepatterns_invalidate", "testapp.Author", str(ada.pk), stdout=StringIO())


def run_with_stderr(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_invalidate_a_known_family_warns_about_nothing():
    out, err = run_with_stderr("cachepatterns_invalidate", "--family", "cmd:{author_id}:f", "author_id=1")
    assert "Invalidated family 'cmd:{author_id}:f'" in out
    assert err == ""


def test_invalidate_a_family_nothing_uses_warns_and_suggests_the_close_one(redis):
    out, err = run_with_stderr("cachepatterns_invalidate", "--family", "cmd:{author_id}:ff", "author_id=1")
    # Still done (the function may live in a module this process does not import)...
    assert "Invalidated family 'cmd:{author_id}:ff'" in out
    # ... but not passed off as a success.
    assert "no @cache_aside function declared in this process uses the family 'cmd:{author_id}:ff'" in err
    assert "Did you mean 'cmd:{author_id}:f'?" in err
    assert "'author:{author_id}:posts'" in err  # the demo's family, imported by its ready()


def test_invalidate_a_family_with_a_parameter_it_does_not_use_warns(django_assert_num_queries):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    titles(ada.pk)
    settle()
    _, err = run_with_stderr(
        "cachepatterns_invalidate", "--family", "cmd:{author_id}:f", f"author_id={ada.pk}", "page=2"
    )
    assert "does not use page; its parameters are author_id" in err
    with django_assert_num_queries(1):
        titles(ada.pk)  # invalidated all the same


def test_invalidate_a_family_with_param_options(django_assert_num_queries):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    titles(ada.pk)
    settle()
    out = run("cachepatterns_invalidate", "--family", "cmd:{author_id}:f", "--param", f"author_id={ada.pk}")
    assert f"Invalidated family 'cmd:{{author_id}}:f' for {{'author_id': '{ada.pk}'}}." in out
    with django_assert_num_queries(1):
        titles(ada.pk)


def test_invalidate_every_row_of_a_model_without_scanning_redis(redis, django_assert_max_num_queries):
    authors = [Author.objects.create(name=f"A{i}", email=f"a{i}@example.com") for i in range(5)]
    for author in authors:
        Author.objects.get(pk=author.pk)
    settle()
    assert all(redis.exists(keys_of(Author, a.pk).value) for a in authors)
    out = run("cachepatterns_invalidate", "testapp.Author", "--batch", "2")
    assert "Invalidated every testapp.Author row (5 row(s))." in out
    assert not any(redis.exists(keys_of(Author, a.pk).value) for a in authors)


def test_stats_says_when_redis_is_down():
    down = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    with override_settings(CACHES=down), pytest.raises(CommandError, match="Redis is unavailable"):
        call_command("cachepatterns_stats", stdout=StringIO())
