"""
One row, one key (issue 7): a row is cached only under the key of its primary key
as the database returned it, qualified by the database it came from; spellings
the database treats as equal never leave an entry a write cannot reach; decorator
parameters that feed a ``depends_on`` family are keyed through their field.

Each scenario ran against real MariaDB (its default ``utf8mb4_unicode_ci``
collation) and Redis; on SQLite the loose columns use ``NOCASE`` (ASCII case only),
so the accent and trailing-space spellings are MariaDB-only.
"""

from __future__ import annotations

import decimal
from typing import Any

import pytest
from django.db import connections, models
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside, invalidate
from cachepatterns_app.identity import database_identity
from cachepatterns_app.registry import row_cache_for
from tests.support import MYSQL, cachepatterns, keys_of, settle, unique_key
from tests.testapp.collations import LOOSE
from tests.testapp.models import Author, Code, Document, Listing, Member, Post, Price, Profile

pytestmark = pytest.mark.django_db(transaction=True)

needs_loose = pytest.mark.skipif(not LOOSE, reason="this database compares these columns exactly")
mysql_only = pytest.mark.skipif(not MYSQL, reason="accents and trailing spaces: MySQL/MariaDB collations")


def queries(fn: Any, using: str = "default") -> tuple[int, Any]:
    with CaptureQueriesContext(connections[using]) as ctx:
        value = fn()
    return len(ctx.captured_queries), value


def cached_keys(redis: Any, model: type[models.Model]) -> set[str]:
    """Every row key of ``model`` that holds a value (no leases, no versions)."""
    label = row_cache_for(model).label  # type: ignore[union-attr]
    found = redis.scan_iter(match=f"cpt:{{*:{label}:*}}", count=1000)
    return {k.decode() for k in found}


# -- spellings of a primary key ------------------------------------------------------------------


LOOSE_SPELLINGS = ["ABC", "Abc"]
MYSQL_SPELLINGS = ["abc ", "ábc", "ÁBC"]


@needs_loose
@pytest.mark.parametrize(
    "spelling", [*LOOSE_SPELLINGS, *[pytest.param(s, marks=mysql_only) for s in MYSQL_SPELLINGS]]
)
def test_another_spelling_of_a_key_is_answered_but_never_cached(redis, spelling):
    Code.objects.create(code="abc", label="first")
    assert Code.objects.get(pk=spelling).label == "first"
    settle()
    # Nothing is stored under the spelling: a write of row "abc" could not reach it.
    assert cached_keys(redis, Code) == set()
    assert redis.exists(keys_of(Code, spelling).value) == 0

    Code.objects.get(pk="abc")  # the database's own spelling is cached
    settle()
    assert cached_keys(redis, Code) == {keys_of(Code, "abc").value}

    code = Code.objects.get(pk="abc")
    code.label = "second"
    code.save()
    assert Code.objects.get(pk=spelling).label == "second"
    assert Code.objects.get(pk="abc").label == "second"


def test_the_stored_spelling_is_cached_and_hit(redis):
    Code.objects.create(code="abc", label="first")
    Code.objects.get(pk="abc")
    settle()
    n, code = queries(lambda: Code.objects.get(pk="abc"))
    assert (n, code.label) == (0, "first")


@needs_loose
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda: Code(code="ABC", label="second").save(), id="hand-built-save"),
        pytest.param(
            lambda: Code.objects.bulk_update([Code(code="ABC", label="second")], ["label"]), id="bulk_update"
        ),
        pytest.param(lambda: Code.objects.filter(pk="ABC").update(label="second"), id="update"),
    ],
)
def test_a_write_by_another_spelling_reaches_the_cached_row(redis, write):
    Code.objects.create(code="abc", label="first")
    Code.objects.get(pk="abc")
    settle()
    assert redis.exists(keys_of(Code, "abc").value) == 1
    write()
    assert models.QuerySet(Code).get(pk="abc").label == "second"
    assert redis.exists(keys_of(Code, "abc").value) == 0
    assert Code.objects.get(pk="abc").label == "second"


@needs_loose
def test_a_delete_by_another_spelling_reaches_the_cached_row(redis):
    Code.objects.create(code="abc", label="first")
    Code.objects.get(pk="abc")
    settle()
    Code(code="ABC").delete()
    assert not models.QuerySet(Code).filter(pk="abc").exists()
    assert redis.exists(keys_of(Code, "abc").value) == 0
    with pytest.raises(Code.DoesNotExist):
        Code.objects.get(pk="abc")


@needs_loose
def test_invalidate_by_another_spelling_reaches_the_cached_row(redis):
    Code.objects.create(code="abc", label="first")
    Code.objects.get(pk="abc")
    settle()
    invalidate(Code, "ABC")
    assert redis.exists(keys_of(Code, "abc").value) == 0


@needs_loose
def test_get_many_returns_what_in_bulk_returns(redis):
    Code.objects.create(code="abc", label="a")
    Code.objects.create(code="xyz", label="x")
    Code.objects.get(pk="xyz")
    settle()
    asked = ["ABC", "xyz", "missing"]
    assert Code.objects.get_many(asked) == models.QuerySet(Code).in_bulk(asked)
    settle()
    assert Code.objects.get_many(asked) == models.QuerySet(Code).in_bulk(asked)
    assert redis.exists(keys_of(Code, "ABC").value) == 0


def test_a_decimal_key_is_one_row_whatever_its_scale(redis):
    Price.objects.create(amount=decimal.Decimal("1.50"), label="one fifty")
    assert Price.objects.get(pk="1.5").label == "one fifty"
    settle()
    assert redis.exists(keys_of(Price, decimal.Decimal("1.50")).value) == 1
    for spelling in ("1.5", "1.50", decimal.Decimal("1.5"), 1.5):
        n, price = queries(lambda spelling=spelling: Price.objects.get(pk=spelling))
        assert (n, price.label, str(price.amount)) == (0, "one fifty", "1.50")
    assert Price.objects.get_many(["1.5"]) == models.QuerySet(Price).in_bulk(["1.5"])

    row = Price.objects.get(pk="1.50")
    row.label = "changed"
    row.save()
    assert Price.objects.get(pk="1.5").label == "changed"


def test_a_decimal_the_column_would_round_goes_to_the_database(redis):
    Price.objects.create(amount=decimal.Decimal("1.50"), label="x")
    with pytest.raises(Price.DoesNotExist):
        models.QuerySet(Price).get(pk="1.505")
    with pytest.raises(Price.DoesNotExist):
        Price.objects.get(pk="1.505")
    settle()
    assert cached_keys(redis, Price) == set()


def test_a_uuid_in_any_spelling_is_one_key(redis):
    doc = Document.objects.create(title="t")
    Document.objects.get(pk=str(doc.pk).upper())
    settle()
    n, found = queries(lambda: Document.objects.get(pk=doc.pk.hex))
    assert (n, found.pk) == (0, doc.pk)


# -- unique fields ------------------------------------------------------------------------------


@needs_loose
def test_a_unique_lookup_in_another_case_is_cached_and_stays_right(redis):
    member = Member.objects.create(email="ada@example.com", name="Ada")
    first, got = queries(lambda: Member.objects.get(email="ADA@example.com"))
    assert got.pk == member.pk
    assert first <= 2
    settle()
    n, got = queries(lambda: Member.objects.get(email="ADA@example.com"))
    assert (n, got.pk) == (0, member.pk)

    # The row moves away from that value: the pointer is refused, the database answers.
    member.email = "other@example.com"
    member.save()
    with pytest.raises(Member.DoesNotExist):
        Member.objects.get(email="ADA@example.com")
    # Another row takes the value: the lookup finds it, not the old one.
    newcomer = Member.objects.create(email="Ada@Example.com", name="New")
    assert Member.objects.get(email="ADA@example.com").pk == newcomer.pk
    settle()
    assert Member.objects.get(email="ADA@example.com").pk == newcomer.pk


def test_a_unique_pointer_that_is_not_ours_is_discarded(redis, counts):
    member = Member.objects.create(email="ada@example.com", name="Ada")
    junk = [b"not json", b'{"a": 1}', b"[1]", b'["x", "y"]']
    for payload in junk:
        redis.set(unique_key("testapp.member", "email", "ada@example.com"), payload)
        assert Member.objects.get(email="ada@example.com").pk == member.pk
    assert counts("testapp.member")["corrupt"] == len(junk)


# -- decorator parameters vs depends_on -----------------------------------------------------------


@cache_aside(key="id:posts:{author_id}", depends_on={Post: "author_id"})
def post_titles(author_id: Any) -> list[str]:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


@cache_aside(key="id:code:{code}:titles", family="id:code:{code}", depends_on={Listing: "code"})
def listing_titles(code: Any) -> list[str]:
    return sorted(Listing.objects.filter(code_id=code).values_list("title", flat=True))


@cache_aside(key="id:doc:{document}", depends_on={Listing: {"document": "document"}})
def document_titles(document: Any) -> list[str]:
    return sorted(Listing.objects.filter(document_id=document).values_list("title", flat=True))


@cache_aside(key="id:member:{email}", depends_on={Listing: {"email": "member_email"}})
def member_titles(email: str) -> list[str]:
    return sorted(Listing.objects.filter(member_email=email).values_list("title", flat=True))


def test_an_integer_parameter_given_as_text_is_invalidated_by_its_rows(redis):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    assert post_titles(f"0{ada.pk}") == []
    settle()
    assert queries(lambda: post_titles(f"0{ada.pk}")) == (0, [])
    Post.objects.create(author=ada, title="new")
    assert post_titles(f"0{ada.pk}") == ["new"]
    assert post_titles(str(ada.pk)) == ["new"]


def test_an_upper_case_uuid_parameter_is_invalidated_by_its_rows(redis):
    code = Code.objects.create(code="k", label="k")
    doc = Document.objects.create(title="d")
    spelling = str(doc.pk).upper()
    assert document_titles(spelling) == []
    settle()
    Listing.objects.create(code=code, document=doc, title="new")
    assert document_titles(spelling) == ["new"]


@needs_loose
def test_a_text_parameter_in_another_case_is_invalidated_by_its_rows(redis):
    code = Code.objects.create(code="abc", label="x")
    assert listing_titles("ABC") == []
    assert member_titles("ADA@EXAMPLE.COM") == []
    settle()
    Listing.objects.create(code=code, member_email="ada@example.com", title="new")
    assert listing_titles("ABC") == ["new"]
    assert member_titles("ADA@EXAMPLE.COM") == ["new"]


@needs_loose
@mysql_only
def test_a_text_parameter_with_accents_or_trailing_spaces_is_invalidated_by_its_rows(redis):
    code = Code.objects.create(code="abc", label="x")
    assert listing_titles("ábc ") == []
    settle()
    Listing.objects.create(code=code, title="new")
    assert listing_titles("ábc ") == ["new"]


def test_distinct_spellings_are_distinct_members_but_one_family():
    # Members never share a result (the function might tell them apart); the family,
    # what a write invalidates, is shared.
    assert listing_titles.key(code="ABC") != listing_titles.key(code="abc")
    family = listing_titles.cached.target.family
    if LOOSE:
        assert family.name({"code": "ABC"}, "default") == family.name({"code": "abc"}, "default")


def test_a_value_its_field_cannot_hold_is_computed_not_cached(redis):
    with pytest.raises(ValueError, match="expected a number"):
        post_titles("not-a-number")


# -- database identity ----------------------------------------------------------------------------

BOTH = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@BOTH
def test_a_row_of_another_database_never_answers_for_this_one(redis):
    here = Author.objects.create(name="here", email="a@example.com")
    Author.objects.using("other").create(pk=here.pk, name="there", email="a@example.com")
    assert Author.objects.get(pk=here.pk).name == "here"
    settle()
    assert Author.objects.using("other").get(pk=here.pk).name == "there"
    assert Author.objects.get(pk=here.pk).name == "here"


@BOTH
def test_a_write_on_another_database_leaves_this_ones_cache_alone(redis):
    here = Author.objects.create(name="here", email="a@example.com")
    there = Author.objects.using("other").create(pk=here.pk, name="there", email="a@example.com")
    Author.objects.get(pk=here.pk)
    settle()
    there.name = "there 2"
    there.save(using="other")
    assert redis.exists(keys_of(Author, here.pk).value) == 1
    assert queries(lambda: Author.objects.get(pk=here.pk).name) == (0, "here")


@BOTH
def test_a_write_through_save_on_another_database_never_lands_in_this_ones_cache(redis):
    mine = Profile.objects.create(handle="ann", name="Ann here")
    theirs = Profile.objects.using("other").create(pk=mine.pk, handle="ann", name="Ann there")
    theirs.name = "Ann there 2"
    theirs.save(using="other")
    settle()
    assert Profile.objects.get(pk=mine.pk).name == "Ann here"
    assert redis.exists(keys_of(Profile, mine.pk, "other").value) == 1
    assert redis.get(keys_of(Profile, mine.pk).value) is None or b"Ann there" not in redis.get(
        keys_of(Profile, mine.pk).value
    )


def test_two_deployments_on_one_redis_never_read_each_others_rows(redis):
    ada = Author.objects.create(name="Ada", email="a@example.com")
    with cachepatterns(DEPLOYMENT_ID="staging"):
        Author.objects.get(pk=ada.pk)
        settle()
        assert queries(lambda: Author.objects.get(pk=ada.pk))[0] == 0
        staging = keys_of(Author, ada.pk).value
    with cachepatterns(DEPLOYMENT_ID="dev"):
        assert keys_of(Author, ada.pk).value != staging
        assert queries(lambda: Author.objects.get(pk=ada.pk))[0] == 1


def test_the_derived_identity_follows_the_database_name(monkeypatch):
    before = database_identity("default")
    config = connections.settings["default"]
    monkeypatch.setitem(config, "NAME", f"{config['NAME']}-elsewhere")
    assert database_identity("default") != before
    monkeypatch.undo()
    assert database_identity("default") == before
    assert database_identity("other") != before


@pytest.mark.parametrize("setting", ["HOST", "PORT"])
def test_the_derived_identity_follows_the_server_when_it_is_repointed_in_place(monkeypatch, setting):
    before = database_identity("default")
    config = connections.settings["default"]
    monkeypatch.setitem(config, setting, "192.0.2.7" if setting == "HOST" else "4406")
    assert database_identity("default") != before
    monkeypatch.undo()
    assert database_identity("default") == before


# -- only the connections a call uses ---------------------------------------------------------


@cache_aside(key="id:count:{author_id}")
def post_count(author_id: int) -> int:
    return Post.objects.filter(author_id=author_id).count()


def test_a_decorated_call_never_touches_a_database_it_does_not_use(redis):
    # This test may use only "default": opening "other" would raise
    # DatabaseOperationForbidden, as an unreachable database would raise OperationalError.
    ada = Author.objects.create(name="Ada", email="a@example.com")
    assert connections["other"].connection is None  # initialised in this thread, not connected
    assert post_count(ada.pk) == 0
    settle()
    assert queries(lambda: post_count(ada.pk)) == (0, 0)
    assert connections["other"].connection is None


# -- what Redis returns is not trusted ------------------------------------------------------


def _payload(redis: Any, model: type[models.Model], pk: Any) -> list[Any]:
    import json

    raw = redis.get(keys_of(model, pk).value)
    assert raw is not None
    return list(json.loads(raw))


def test_a_payload_naming_another_row_is_discarded(redis, counts):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    bob = Author.objects.create(name="Bob", email="bob@example.com")
    Author.objects.get(pk=bob.pk)
    settle()
    import json

    redis.set(keys_of(Author, ada.pk).value, json.dumps(_payload(redis, Author, bob.pk)))
    assert Author.objects.get(pk=ada.pk).name == "Ada"
    assert counts("testapp.author")["corrupt"] == 1
    assert Author.objects.get_many([ada.pk])[ada.pk].name == "Ada"


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", {"a": 1}), ("name", 7), ("email", None), ("id", "7"), ("id", True), ("joined", 12)],
)
def test_a_value_of_the_wrong_type_for_its_field_is_discarded(redis, counts, field, value):
    import json

    ada = Author.objects.create(name="Ada", email="ada@example.com")
    Author.objects.get(pk=ada.pk)
    settle()
    payload = _payload(redis, Author, ada.pk)
    index = 1 + [f.attname for f in Author._meta.concrete_fields].index(field)
    payload[index] = value
    redis.set(keys_of(Author, ada.pk).value, json.dumps(payload))
    got = Author.objects.get(pk=ada.pk)
    assert (got.name, got.email) == ("Ada", "ada@example.com")
    assert counts("testapp.author")["corrupt"] == 1


@pytest.mark.parametrize("degrade", [True, False])
@pytest.mark.parametrize("kind", ["hash", "list", "set"])
def test_a_key_of_another_redis_type_is_healed_never_an_error(redis, counts, degrade, kind):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    key = keys_of(Author, ada.pk).value
    {
        "hash": lambda: redis.hset(key, "a", "b"),
        "list": lambda: redis.rpush(key, "a"),
        "set": lambda: redis.sadd(key, "a"),
    }[kind]()
    with cachepatterns(DEGRADE_ON_FAILURE=degrade):
        assert Author.objects.get(pk=ada.pk).name == "Ada"
        settle()
        assert redis.type(key) == b"string"  # the reader's fill replaced it
        assert queries(lambda: Author.objects.get(pk=ada.pk).name) == (0, "Ada")
        assert Author.objects.get_many([ada.pk])[ada.pk].name == "Ada"
    assert counts("testapp.author")["corrupt"] >= 1


def test_a_lease_of_another_redis_type_never_makes_a_reader_wait(redis, counts):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    redis.hset(keys_of(Author, ada.pk).lease, "a", "b")
    with cachepatterns(LOCK_TIMEOUT=30):
        n, got = queries(lambda: Author.objects.get(pk=ada.pk))
    assert (n, got.name) == (1, "Ada")
    assert counts("testapp.author").get("wait", 0) == 0


@cache_aside(key="id:gen:{author_id}", family="id:gen:{author_id}:f", depends_on={Post: "author_id"})
def titles_in_family(author_id: int) -> list[str]:
    return sorted(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


@pytest.mark.parametrize("bad", [b"garbage", b"12x", b"-5", b"1" * 30, "hash"])
def test_a_malformed_generation_is_restarted_and_the_family_keeps_working(redis, counts, bad):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    generation = titles_in_family.cached.target.family.keys({"author_id": ada.pk}).generation
    if bad == "hash":
        redis.hset(generation, "a", "b")
    else:
        redis.set(generation, bad)
    with cachepatterns(DEGRADE_ON_FAILURE=False):
        assert titles_in_family(ada.pk) == []
        settle()
        assert queries(lambda: titles_in_family(ada.pk)) == (0, [])
        # Writes still invalidate it: the family is not frozen.
        Post.objects.create(author=ada, title="new")
        assert titles_in_family(ada.pk) == ["new"]
    assert redis.get(generation).isdigit()


def test_a_bump_of_a_malformed_generation_restarts_the_family(redis):
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    assert titles_in_family(ada.pk) == []
    settle()
    generation = titles_in_family.cached.target.family.keys({"author_id": ada.pk}).generation
    redis.set(generation, b"garbage")
    Post.objects.create(author=ada, title="new")  # the bump deletes what INCR cannot increment
    assert redis.exists(generation) == 0
    assert titles_in_family(ada.pk) == ["new"]


@pytest.mark.parametrize("junk", [b"garbage", b"", "hash"])
def test_a_write_through_version_key_that_is_not_ours_never_blocks_puts(redis, junk):
    ann = Profile.objects.create(handle="ann", name="Ann")
    version = keys_of(Profile, ann.pk).version
    if junk == "hash":
        redis.delete(version)
        redis.hset(version, "a", "b")
    else:
        redis.set(version, junk)
    ann.name = "Ann 2"
    ann.save()
    settle()
    assert queries(lambda: Profile.objects.get(pk=ann.pk).name) == (0, "Ann 2")
