"""
Write-through rows and ``@write_through`` (issue 4), against the real Redis and database.

After every committed write path the cache holds exactly the database row, or
nothing — never an older row — and the read after a ``save()`` is a hit that
costs no SQL. Work that rolls back (a transaction or a savepoint) puts nothing.

A save learns the version it produced from ``LAST_INSERT_ID`` on MySQL/MariaDB
and by reading the row back elsewhere: run this file on both databases to cover
both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from django.db.models import F

from cachepatterns_app import cache_aside, write_through
from cachepatterns_app.keys import model_label
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import SCRIPTS
from tests.profiles import (
    assert_cached_is_db,
    assert_cached_is_db_or_absent,
    cached,
    cached_entry,
    db_row,
    existing,
    orm,
    state,
)
from tests.support import MYSQL, keys_of, plain_keys, settle
from tests.testapp.models import Profile

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = model_label(Profile)


class Boom(Exception):
    """Raised to roll a transaction back."""


# -- helpers ----------------------------------------------------------------------------


def rolled_back(work: Callable[[], object]) -> None:
    """Run ``work`` inside two nested atomic blocks, then roll everything back."""
    with transaction.atomic():
        with transaction.atomic():
            work()
        raise Boom


def make(handle: str = "ann", name: str = "Ann", score: int = 0) -> Profile:
    profile: Profile = Profile.objects.create(handle=handle, name=name, score=score)
    return profile


def put_count(counts: Any) -> int:
    return int(counts(LABEL).get("put", 0))


def run_put_script(redis: Any, pk: Any, instance: Profile, version: int) -> int:
    """Run the writer's put Lua script by hand (what a late writer sends)."""
    cache = row_cache_for(Profile)
    assert cache is not None
    payload = cache.encode(instance)
    keys = keys_of(Profile, pk)
    return int(
        redis.eval(
            SCRIPTS["put_versioned"],
            3,
            keys.value,
            keys.lease,
            keys.version,
            version,
            payload,
            300_000,
            0,
            "",
        )
    )


# -- save() -----------------------------------------------------------------------------


def test_create_puts_the_row_and_the_next_read_is_a_free_hit(redis, counts, django_assert_num_queries):
    profile = make()

    assert profile.version == 0
    assert put_count(counts) == 1
    assert_cached_is_db(redis, profile.pk)
    with django_assert_num_queries(0):
        got = Profile.objects.get(pk=profile.pk)
    assert state(got) == state(existing(profile.pk))


def test_save_in_autocommit_puts_the_new_row(redis, counts, django_assert_num_queries):
    profile = make()
    before = put_count(counts)

    profile.name = "Ann B."
    profile.score = 7
    profile.save()

    row = existing(profile.pk)
    assert row.version == 1
    # The instance knows the version the database gave it, as a plain int.
    assert type(profile.version) is int
    assert profile.version == row.version
    assert put_count(counts) == before + 1
    assert_cached_is_db(redis, profile.pk)
    with django_assert_num_queries(0):
        got = Profile.objects.get(pk=profile.pk)
    assert (got.name, got.score, got.version) == ("Ann B.", 7, 1)
    assert state(got) == state(row)


def test_repeated_saves_keep_the_cache_on_the_latest_version(redis, django_assert_num_queries):
    profile = make()
    for n in range(1, 6):
        profile.score = n * 10
        profile.save()
        assert profile.version == n
        assert_cached_is_db(redis, profile.pk)
    with django_assert_num_queries(0):
        got = Profile.objects.get(pk=profile.pk)
    assert (got.score, got.version) == (50, 5)


def test_unique_field_read_after_save_is_a_free_hit(redis, django_assert_num_queries):
    profile = make()
    assert Profile.objects.get(handle="ann").pk == profile.pk  # makes the handle pointer
    profile.name = "Renamed"
    profile.save()

    with django_assert_num_queries(0):
        got = Profile.objects.get(handle="ann")
    assert state(got) == state(existing(profile.pk))


def test_save_in_nested_atomic_blocks_puts_after_the_outermost_commit(
    redis, counts, django_assert_num_queries
):
    profile = make()
    before = put_count(counts)

    with transaction.atomic():
        with transaction.atomic():
            profile.name = "inner"
            profile.save()
            # The version is known inside the transaction, and is an int.
            assert type(profile.version) is int
            assert profile.version == 1
        # The savepoint was released, the transaction is still open: nothing put yet.
        entry = cached(redis, profile.pk)
        assert entry is not None
        assert (entry.name, entry.version) == ("Ann", 0)
        assert put_count(counts) == before

    assert put_count(counts) == before + 1
    row = assert_cached_is_db(redis, profile.pk)
    assert (row.name, row.version) == ("inner", 1)
    assert profile.version == row.version
    with django_assert_num_queries(0):
        got = Profile.objects.get(pk=profile.pk)
    assert state(got) == state(row)


def test_two_saves_in_one_transaction_leave_the_last(redis, django_assert_num_queries):
    profile = make()
    with transaction.atomic():
        profile.name = "first"
        profile.save()
        with transaction.atomic():
            profile.name = "second"
            profile.score = 2
            profile.save()

    row = assert_cached_is_db(redis, profile.pk)
    assert (row.name, row.score, row.version) == ("second", 2, 2)
    assert profile.version == 2
    with django_assert_num_queries(0):
        assert state(Profile.objects.get(pk=profile.pk)) == state(row)


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
@pytest.mark.parametrize(
    "update_fields",
    [["name"], ["name", "score"], ["name", "version"]],
    ids=["name", "name+score", "with-version"],
)
def test_save_with_update_fields_still_increments_the_version(
    redis, django_assert_num_queries, update_fields, in_transaction
):
    profile = make()
    Profile.objects.filter(pk=profile.pk).update(score=5)  # version 1 in the database
    stale_score = profile.score  # 0 in memory: must not be written by update_fields=["name"]

    profile.name = "partial"
    if in_transaction:
        with transaction.atomic():
            profile.save(update_fields=update_fields)
    else:
        profile.save(update_fields=update_fields)

    row = existing(profile.pk)
    assert row.version == 2
    assert row.name == "partial"
    assert row.score == (stale_score if "score" in update_fields else 5)
    assert type(profile.version) is int
    assert profile.version == row.version
    assert_cached_is_db_or_absent(redis, profile.pk)
    got = Profile.objects.get(pk=profile.pk)
    assert state(got) == state(row)
    settle()  # a miss fills without waiting for Redis's reply
    with django_assert_num_queries(0):
        assert state(Profile.objects.get(pk=profile.pk)) == state(row)


def test_a_stale_instance_saved_last_wins_in_the_cache_as_in_the_database(redis):
    # The in-memory row a save writes is the whole row, so the cache may take it as is.
    profile = make()
    other = orm().get(pk=profile.pk)
    other.score = 99
    other.save()
    profile.name = "from the stale copy"
    profile.save()

    row = assert_cached_is_db(redis, profile.pk)
    assert (row.name, row.score, row.version) == ("from the stale copy", 0, 2)


# -- bulk paths -------------------------------------------------------------------------


def test_queryset_update_increments_versions_and_leaves_no_older_row(redis, django_assert_num_queries):
    a, b, c = make("a"), make("b"), make("c")
    for p in (a, b, c):
        Profile.objects.get(pk=p.pk)  # cached, version 0

    assert Profile.objects.filter(handle__in=["a", "b"]).update(score=F("score") + 5) == 2

    assert [existing(p.pk).version for p in (a, b, c)] == [1, 1, 0]
    assert [existing(p.pk).score for p in (a, b, c)] == [5, 5, 0]
    for p in (a, b):
        assert_cached_is_db_or_absent(redis, p.pk)
    assert_cached_is_db(redis, c.pk)  # untouched rows stay cached
    for p in (a, b):
        row = existing(p.pk)
        assert state(Profile.objects.get(pk=p.pk)) == state(row)
        settle()
        with django_assert_num_queries(0):
            assert state(Profile.objects.get(pk=p.pk)) == state(row)


def test_queryset_update_inside_a_transaction_waits_for_commit(redis):
    profile = make()
    with transaction.atomic():
        Profile.objects.filter(pk=profile.pk).update(name="x")
        entry = cached(redis, profile.pk)
        assert entry is not None
        assert entry.name == "Ann"  # nothing before commit
    assert_cached_is_db_or_absent(redis, profile.pk)
    assert existing(profile.pk).version == 1


def test_bulk_update_increments_versions_and_leaves_no_older_row(redis, django_assert_num_queries):
    rows = [make(f"h{i}", score=i) for i in range(3)]
    for p in rows:
        p.name = f"bulk {p.handle}"
    assert Profile.objects.bulk_update(rows[:2], ["name"]) == 2

    for p in rows[:2]:
        row = existing(p.pk)
        assert (row.name, row.version) == (f"bulk {p.handle}", 1)
        assert type(p.version) is int
        assert p.version == row.version
        assert_cached_is_db_or_absent(redis, p.pk)
        assert state(Profile.objects.get(pk=p.pk)) == state(row)
        settle()
        with django_assert_num_queries(0):
            assert state(Profile.objects.get(pk=p.pk)) == state(row)
    untouched = assert_cached_is_db(redis, rows[2].pk)
    assert untouched.version == 0


def test_bulk_create_leaves_new_rows_readable_and_consistent(redis, django_assert_num_queries):
    created = Profile.objects.bulk_create([Profile(handle=f"b{i}", name=f"B{i}") for i in range(3)])
    for p in orm().filter(handle__startswith="b"):
        assert p.version == 0
        assert_cached_is_db_or_absent(redis, p.pk)
        assert state(Profile.objects.get(pk=p.pk)) == state(p)
        settle()
        with django_assert_num_queries(0):
            assert state(Profile.objects.get(pk=p.pk)) == state(p)
    assert len(created) == 3


def test_bulk_create_upsert_leaves_no_older_row(redis):
    profile = make(name="before")
    Profile.objects.get(pk=profile.pk)
    assert cached_entry(redis, profile.pk).name == "before"

    options: dict[str, Any] = {"update_conflicts": True, "update_fields": ["name"]}
    if not MYSQL:
        options["unique_fields"] = ["handle"]
    Profile.objects.bulk_create([Profile(handle="ann", name="after")], **options)

    assert existing(profile.pk).name == "after"
    assert_cached_is_db_or_absent(redis, profile.pk)
    assert Profile.objects.get(pk=profile.pk).name == "after"


def test_bulk_create_upsert_increments_the_version_so_a_late_put_is_refused(redis):
    profile = make(name="before")
    late = orm().get(pk=profile.pk)  # a writer's row, its put still on the wire

    options: dict[str, Any] = {"update_conflicts": True, "update_fields": ["name"]}
    if not MYSQL:
        options["unique_fields"] = ["handle"]
    Profile.objects.bulk_create([Profile(handle="ann", name="after")], **options)
    Profile.objects.get(pk=profile.pk)  # a reader refills the upserted row
    settle()
    run_put_script(redis, profile.pk, late, late.version)

    assert_cached_is_db_or_absent(redis, profile.pk)
    assert existing(profile.pk).version > late.version


# -- deletes ----------------------------------------------------------------------------


DELETES = {
    "instance": lambda p: p.delete(),
    "queryset": lambda p: Profile.objects.filter(pk=p.pk).delete(),
}


@pytest.mark.parametrize("how", list(DELETES))
def test_delete_removes_the_row_and_leaves_a_tombstone(redis, how):
    profile, other = make("gone"), make("kept")
    pk = profile.pk
    assert cached(redis, pk) is not None

    DELETES[how](profile)

    assert db_row(pk) is None
    keys = keys_of(Profile, pk)
    assert redis.get(keys.value) is None
    assert redis.get(keys.version) == b"x"
    assert redis.pttl(keys.version) > 0  # the tombstone expires on its own
    with pytest.raises(Profile.DoesNotExist):
        Profile.objects.get(pk=pk)
    with pytest.raises(Profile.DoesNotExist):
        Profile.objects.get(handle="gone")
    assert_cached_is_db(redis, other.pk)


def test_delete_inside_a_transaction_tombstones_after_commit(redis):
    profile = make()
    keys = keys_of(Profile, profile.pk)
    with transaction.atomic():
        Profile.objects.filter(pk=profile.pk).delete()
        assert redis.get(keys.version) == b"0"
        assert redis.get(keys.value) is not None
    assert redis.get(keys.value) is None
    assert redis.get(keys.version) == b"x"


def test_a_late_put_for_a_deleted_row_is_refused(redis):
    profile = make()
    pk = profile.pk
    profile.name = "written before the delete"
    profile.save()  # version 1, committed; imagine its put is still on the wire
    late = orm().get(pk=pk)
    profile.delete()

    # The late writer's put (its version, and even a higher one) cannot bring the row back.
    assert run_put_script(redis, pk, late, late.version) == 0
    assert run_put_script(redis, pk, late, late.version + 10) == 0
    keys = keys_of(Profile, pk)
    assert redis.get(keys.value) is None
    assert redis.get(keys.version) == b"x"
    with pytest.raises(Profile.DoesNotExist):
        Profile.objects.get(pk=pk)


def test_a_row_created_again_after_a_delete_is_served_and_never_older(redis):
    profile = make()
    pk = profile.pk
    profile.delete()
    again = Profile.objects.create(pk=pk, handle="ann", name="again")

    # The create's own put meets the tombstone: absent is allowed, older is not.
    assert_cached_is_db_or_absent(redis, pk)
    for _ in range(2):
        assert state(Profile.objects.get(pk=pk)) == state(again)
        settle()
        assert_cached_is_db_or_absent(redis, pk)


def test_saving_an_instance_whose_row_was_deleted_meanwhile_leaves_the_cache_agreeing(redis):
    # Plain Django would INSERT the row again. With the version expression in the
    # UPDATE, SQLite refuses the INSERT (ValueError) while MySQL/MariaDB re-inserts
    # the row with version 1: either way the cache must agree with the database.
    profile = make()
    pk = profile.pk
    profile.name = "v1"
    profile.save()
    Profile.objects.filter(pk=pk).delete()

    profile.name = "saved after the delete"
    error: ValueError | None = None
    try:
        profile.save()
    except ValueError as e:
        error = e
    if error is not None:
        assert "expression" in str(error)
    row = db_row(pk)
    assert_cached_is_db_or_absent(redis, pk)
    if row is None:
        with pytest.raises(Profile.DoesNotExist):
            Profile.objects.get(pk=pk)
    else:
        assert profile.pk == pk
        assert profile.version == row.version
        assert state(Profile.objects.get(pk=pk)) == state(row)


def test_a_late_put_from_before_a_delete_cannot_replace_the_row_created_again(redis):
    # Versions restart at 0 when a primary key is used again, so the late put's
    # version looks newer than the new row's: only the tombstone can refuse it.
    profile = make()
    pk = profile.pk
    profile.name = "old row"
    profile.save()  # version 1; its put is late
    late = orm().get(pk=pk)
    profile.delete()
    again = Profile.objects.create(pk=pk, handle="ann", name="new row")  # version 0
    Profile.objects.get(pk=pk)  # a reader (may refill the new row)
    settle()

    run_put_script(redis, pk, late, late.version)

    assert_cached_is_db_or_absent(redis, pk)
    assert state(Profile.objects.get(pk=pk)) == state(again)


# -- rollbacks --------------------------------------------------------------------------


@pytest.mark.parametrize("prefilled", [True, False], ids=["cached", "not-cached"])
def test_a_rolled_back_save_puts_nothing(redis, counts, prefilled):
    profile = make()
    keys = keys_of(Profile, profile.pk)
    if not prefilled:
        redis.delete(keys.value)
    before_cache = redis.get(keys.value)
    before_db = state(existing(profile.pk))
    before_puts = put_count(counts)

    profile.name = "rolled back"
    with pytest.raises(Boom):
        rolled_back(profile.save)

    assert state(existing(profile.pk)) == before_db
    assert redis.get(keys.value) == before_cache
    assert put_count(counts) == before_puts
    assert state(Profile.objects.get(pk=profile.pk)) == before_db


def test_a_rolled_back_create_puts_nothing(redis, counts):
    created: list[Profile] = []
    with pytest.raises(Boom):
        rolled_back(lambda: created.append(make("ghost")))
    assert db_row(created[0].pk) is None
    assert redis.get(keys_of(Profile, created[0].pk).value) is None
    assert put_count(counts) == 0


def test_a_rolled_back_delete_leaves_the_row_cached(redis):
    profile = make()
    keys = keys_of(Profile, profile.pk)
    with pytest.raises(Boom):
        rolled_back(lambda: orm().get(pk=profile.pk).delete())
    assert redis.get(keys.version) == b"0"
    assert_cached_is_db(redis, profile.pk)


def test_a_rolled_back_savepoint_puts_nothing_but_the_outer_save_is_put(
    redis, counts, django_assert_num_queries
):
    kept, dropped = make("kept"), make("dropped")
    dropped_before = state(existing(dropped.pk))
    before = put_count(counts)

    with transaction.atomic():
        kept.name = "kept new"
        kept.save()
        try:
            with transaction.atomic():
                dropped.name = "dropped new"
                dropped.save()
                raise Boom
        except Boom:
            pass

    assert put_count(counts) == before + 1
    row = assert_cached_is_db(redis, kept.pk)
    assert (row.name, row.version) == ("kept new", 1)
    assert state(existing(dropped.pk)) == dropped_before
    assert state(cached_entry(redis, dropped.pk)) == dropped_before
    with django_assert_num_queries(0):
        assert Profile.objects.get(pk=kept.pk).name == "kept new"
        assert Profile.objects.get(pk=dropped.pk).name == "Ann"


# -- @write_through ---------------------------------------------------------------------


@write_through(key="profile:{handle}")
def rename(handle: str, name: str) -> Profile:
    profile = orm().get(handle=handle)
    profile.name = name
    profile.save()
    return profile


@write_through(key="profile:{handle}")
def publish(handle: str, profile: Profile) -> Profile:
    """Store ``profile`` as given (a writer that returns what it was handed)."""
    return profile


@write_through(key="profile-card:{handle}")
def rename_card(handle: str, name: str) -> dict[str, Any]:
    profile = rename.__wrapped__(handle, name)  # type: ignore[attr-defined]
    return {"handle": handle, "name": profile.name, "version": profile.version}


@write_through(key="profile-card:{handle}")
def publish_card(handle: str, card: dict[str, Any]) -> dict[str, Any]:
    return card


@cache_aside(key="profile:{handle}")
def profile_of(handle: str) -> Profile:
    # A plain QuerySet, so that a miss costs a query whatever the row cache holds.
    return orm().get(handle=handle)


@cache_aside(key="profile-card:{handle}")
def card_of(handle: str) -> dict[str, Any]:
    profile = orm().get(handle=handle)
    return {"handle": handle, "name": profile.name, "version": profile.version}


def test_write_through_decorator_stores_the_return_value_for_the_reader(
    redis, counts, django_assert_num_queries
):
    make()
    with django_assert_num_queries(1):
        assert profile_of("ann").name == "Ann"  # a miss: the reader's own query

    returned = rename("ann", "Ann via decorator")

    assert counts("profile:{handle}").get("put") == 1
    assert redis.exists(plain_keys("profile:ann").value) == 1
    with django_assert_num_queries(0):
        got = profile_of("ann")
    assert isinstance(got, Profile)
    assert state(got) == state(returned) == state(existing(returned.pk))
    assert got.version == 1


def test_write_through_decorator_inside_a_transaction_stores_after_commit(redis, django_assert_num_queries):
    make()
    key = plain_keys("profile:ann").value
    with transaction.atomic():
        rename("ann", "in a transaction")
        assert redis.exists(key) == 0
    with django_assert_num_queries(0):
        assert profile_of("ann").name == "in a transaction"


@pytest.mark.parametrize("prefilled", [True, False], ids=["cached", "not-cached"])
def test_write_through_decorator_stores_nothing_on_rollback(
    redis, counts, django_assert_num_queries, prefilled
):
    make()
    key = plain_keys("profile:ann").value
    if prefilled:
        profile_of("ann")
    before = redis.get(key)

    with pytest.raises(Boom):
        rolled_back(lambda: rename("ann", "rolled back"))

    assert redis.get(key) == before
    assert counts("profile:{handle}").get("put", 0) == 0
    assert orm().get(handle="ann").name == "Ann"
    assert profile_of("ann").name == "Ann"


def test_write_through_decorator_never_replaces_a_newer_instance(redis, django_assert_num_queries):
    make()
    stale = orm().get(handle="ann")  # version 0
    rename("ann", "v1")
    rename("ann", "v2")

    publish("ann", stale)  # a writer that committed earlier, reaching Redis last

    with django_assert_num_queries(0):
        got = profile_of("ann")
    assert (got.name, got.version) == ("v2", 2)
    assert redis.get(plain_keys("profile:ann").version) == b"2"


def test_write_through_decorator_orders_dicts_by_their_version(redis, django_assert_num_queries):
    make()
    rename_card("ann", "v1")
    rename_card("ann", "v2")
    publish_card("ann", {"handle": "ann", "name": "v1", "version": 1})

    with django_assert_num_queries(0):
        assert card_of("ann") == {"handle": "ann", "name": "v2", "version": 2}
