"""
Regressions found by review: each test failed before its fix.

Manual transactions, bulk inserts that return no keys, write-through saves that
cannot be stored or carry unconverted values, Redis refusing invalidations for a
while (out of memory), forked workers' lease tokens, upserts with no conflict
target, and @write_through with families and size limits.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings

from cachepatterns_app import cache_aside, invalidation, write_through
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.store import new_token
from tests.support import MYSQL, cachepatterns, keys_of, plain_keys, private_redis, settle
from tests.testapp.models import Author, Post, Profile

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def test_manual_transactions_never_cache_uncommitted_rows():
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    transaction.set_autocommit(False)
    try:
        ada.name = "never committed"
        ada.save()
        assert Author.objects.get(pk=ada.pk).name == "never committed"
        settle()
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert Author.objects.get(pk=ada.pk).name == "Ada"


def test_a_rolled_back_bulk_insert_without_returned_keys_is_not_cached(monkeypatch):
    # MySQL (not MariaDB >= 10.5) returns no primary keys from bulk inserts.
    monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)
    seen: list[Any] = []

    def insert_read_and_roll_back() -> None:
        with transaction.atomic():
            Author.objects.bulk_create([Author(name="Ghost", email="ghost@example.com")])
            pk = Author.objects.filter(email="ghost@example.com").values_list("pk", flat=True).get()
            seen.append(Author.objects.get(pk=pk).pk)
            settle()
            raise Rollback

    with pytest.raises(Rollback):
        insert_read_and_roll_back()
    with pytest.raises(Author.DoesNotExist):
        Author.objects.get(pk=seen[0])


def test_a_write_through_save_that_cannot_be_cached_drops_the_old_row(redis):
    profile = Profile.objects.create(handle="big", name="small")
    settle()
    old_size = len(redis.get(keys_of(Profile, profile.pk).value))
    with cachepatterns(MAX_VALUE_BYTES=old_size + 20):
        profile.name = "x" * 100  # the new payload is over the limit
        profile.save()
        settle()
        assert Profile.objects.get(pk=profile.pk).name == "x" * 100


def test_a_write_through_put_from_memory_holds_database_values():
    profile = Profile.objects.create(handle="typ", name="n")
    with transaction.atomic():
        profile.score = "7"  # as from a form; the database stores the integer 7
        profile.save()
    settle()
    cached = Profile.objects.get(pk=profile.pk)
    assert cached.score == 7
    assert type(cached.score) is int


@cache_aside(key="rr:titles:{author_id}", family="rr:titles:{author_id}:f", depends_on={Post: "author_id"})
def titles(author_id: int) -> Any:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


def test_an_invalidation_redis_refuses_for_now_is_kept_until_it_is_accepted():
    breaker = {"THRESHOLD": 1, "COOLDOWN": 0.2}
    with (
        private_redis() as server,
        override_settings(CACHES=server.caches()),
        cachepatterns(CIRCUIT_BREAKER=breaker),
    ):
        ada = Author.objects.create(name="Ada", email="ada@example.com")
        Post.objects.create(author=ada, title="one")
        assert titles(ada.pk) == ["one"]
        settle()
        server.client.config_set("maxmemory-policy", "noeviction")
        server.client.config_set("maxmemory", 1)  # out of memory: writes refused
        Post.objects.create(author=ada, title="two")  # the family bump is refused
        assert titles(ada.pk) == ["one", "two"]  # Redis still refusing: read from the database
        assert invalidation.pending_retries() == 1
        server.client.config_set("maxmemory", 0)
        time.sleep(0.3)  # the breaker's cooldown: the next call probes Redis again
        assert titles(ada.pk) == ["one", "two"]
        assert invalidation.pending_retries() == 0


def test_forked_processes_draw_different_lease_tokens():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first token and leave at once
        os.write(write, new_token().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child[:16] != new_token()[:16]


@pytest.mark.skipif(not MYSQL, reason="update_conflicts without unique_fields is MySQL/MariaDB only")
def test_an_upsert_with_no_conflict_target_touches_no_other_row(redis):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    Author.objects.get(pk=ada.pk)
    settle()
    assert redis.exists(keys_of(Author, ada.pk).value)
    posts = Post.objects.bulk_create(
        [Post(author=ada, title="new")], update_conflicts=True, update_fields=["title"]
    )
    assert len(posts) == 1
    assert redis.exists(keys_of(Author, ada.pk).value)  # nothing else invalidated


STATE = {"value": "old"}


@cache_aside(key="rr:value:{x}", family="rr:values:{x}")
def read_value(x: int) -> Any:
    return {"v": STATE["value"]}


@write_through(key="rr:value:{x}", family="rr:values:{x}")
def write_value(x: int) -> Any:
    STATE["value"] = "new"
    return {"v": "new"}


def test_write_through_stores_into_the_readers_family(django_assert_num_queries):
    STATE["value"] = "old"
    assert read_value(1) == {"v": "old"}
    settle()
    write_value(1)
    STATE["value"] = "changed behind the cache"
    assert read_value(1) == {"v": "new"}


@write_through(key="rr:big:{x}")
def write_big(x: int) -> Any:
    return "y" * 5000


def test_write_through_respects_max_value_bytes(redis):
    with cachepatterns(MAX_VALUE_BYTES=1000):
        write_big(1)
    assert redis.get(plain_keys("rr:big:1").value) is None


def test_a_family_member_without_a_ttl_is_refused():
    with pytest.raises(ConfigurationError, match="TTL"):

        @cache_aside(key="rr:forever:{x}", family="rr:forever", ttl=None)
        def forever(x: int) -> int:
            return x
