"""
Tests for ``cachepatterns_app.codecs`` through the real read path (real database,
real Redis): a row read from the cache must equal, type for type, the row the
ORM returns, and nothing unreadable in Redis may ever surface as an exception.
"""

from __future__ import annotations

import datetime
import decimal
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from django.db import models

from cachepatterns_app.codecs import row_codec
from cachepatterns_app.serializers import get_serializer
from tests.support import row_keys, unique_key
from tests.testapp.models import Author, Document, Everything

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "testapp.everything"


def wait_for(condition: Callable[[], Any], timeout: float = 2.0) -> Any:
    """Poll ``condition`` until it is truthy: fills are sent without awaiting a reply."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.005)


def assert_same_row(cached: models.Model, orm: models.Model) -> None:
    """Assert every concrete field is equal and of the same type (and repr)."""
    assert type(cached) is type(orm)
    assert cached._state.adding is False
    assert cached._state.db == "default"
    for field in type(orm)._meta.concrete_fields:
        got, want = getattr(cached, field.attname), getattr(orm, field.attname)
        if isinstance(field, models.BinaryField) and want is not None:
            # Some backends hand out memoryview; the cache hands out bytes.
            assert type(got) is bytes, field.attname
            assert got == bytes(want), field.attname
            continue
        assert type(got) is type(want), (field.attname, got, want)
        assert got == want, field.attname
        # repr also tells Decimal('1.5') from Decimal('1.500000') and UTC from +00:00.
        assert repr(got) == repr(want), field.attname


@pytest.fixture
def author() -> Author:
    return Author.objects.create(name="Zoë", email="zoe@example.org", slug="zoe")


def awkward(author: Author) -> dict[str, Any]:
    return {
        "char": '  \u2018quotes\u2019 "double" \\back\\ 🚀 trailing  ',
        "text": "line1\nline2\r\n\ttab — ünïcødé 😀 " * 20,
        "slug": "a-slug_1",
        "email": "zoë+tag@exämple.org",
        "url": "https://example.org/p?q=1&r=ü#frag",
        "integer": -(2**31),
        "small": -(2**15),
        "big": 2**63 - 1,
        "positive": 2**31 - 1,
        "floating": 0.1 + 0.2,
        "decimal": decimal.Decimal("-12345678901234.123456"),
        "boolean": True,
        "maybe": False,
        "day": datetime.date(2024, 2, 29),
        # Half-hour offset, the night DST starts, with microseconds.
        "moment": datetime.datetime(2024, 3, 10, 1, 59, 59, 999999, tzinfo=ZoneInfo("America/St_Johns")),
        "clock": datetime.time(23, 59, 59, 999999),
        "duration": datetime.timedelta(days=100_000, microseconds=1),
        "uuid": uuid.uuid4(),
        "blob": b"\x00\x01\x00\xff\x00",
        "data": {
            "ü": ["✓", {"emoji": "😀", "n": 1.5, "none": None, "big": 2**53 + 1}],
            "": [],
            "nested": {"a": {"b": [True, False, "\u2028"]}},
        },
        "ip": "2001:db8::8a2e:370:7334",
        "author": author,
    }


def negative(author: Author) -> dict[str, Any]:
    return {
        "integer": -1,
        "small": 0,
        "big": -(2**63),
        "positive": 0,
        "floating": -1.7976931348623157e308,
        "decimal": decimal.Decimal("-0.000001"),
        "maybe": None,
        "day": datetime.date(1900, 1, 1),
        "moment": datetime.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=ZoneInfo("Pacific/Kiritimati")),
        "clock": datetime.time(0, 0),
        "duration": -datetime.timedelta(days=100_000, microseconds=1),
        "uuid": uuid.UUID(int=0),
        "blob": b"",
        "data": ["a list", 1, None],
        "ip": "127.0.0.1",
        "author": None,
    }


def nulls(author: Author) -> dict[str, Any]:
    return {}  # every nullable field left None, strings at their "" default


ROWS = pytest.mark.parametrize("make", [awkward, negative, nulls], ids=["awkward", "negative", "nulls"])


@pytest.fixture(params=["json", "msgpack", "pickle"])
def serializer(request: pytest.FixtureRequest, settings: Any) -> str:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "SERIALIZER": request.param}
    return str(request.param)


def read_twice(model: type[models.Model], pk: Any, redis: Any, django_assert_num_queries: Any) -> Any:
    """Return (miss, hit) for ``model.objects.get(pk=pk)``; the hit must cost no query."""
    miss = model.objects.get(pk=pk)
    assert wait_for(lambda: redis.exists(row_keys(row_codec(model).label, pk).value))
    with django_assert_num_queries(0):
        hit = model.objects.get(pk=pk)
    return miss, hit


@ROWS
def test_everything_round_trips(
    make: Any, serializer: str, author: Author, redis: Any, django_assert_num_queries: Any, counts: Any
) -> None:
    row = Everything.objects.create(**make(author))
    orm = models.QuerySet(Everything).get(pk=row.pk)

    miss, hit = read_twice(Everything, row.pk, redis, django_assert_num_queries)

    assert_same_row(miss, orm)
    assert_same_row(hit, orm)
    seen = counts(LABEL)
    assert (seen["miss"], seen["fill"], seen["hit"]) == (1, 1, 1)
    assert "corrupt" not in seen
    # The FK of a cached row still resolves.
    assert hit.author == orm.author


@pytest.mark.parametrize(
    ("name", "looks_right"),
    [
        ("json", lambda raw: isinstance(json.loads(raw), list)),
        ("msgpack", lambda raw: isinstance(msgpack.unpackb(raw), list) and not raw.startswith(b"[")),
        ("pickle", lambda raw: raw.startswith(b"cpP1")),
    ],
)
def test_payload_uses_the_configured_serializer(
    name: str, looks_right: Any, settings: Any, author: Author, redis: Any
) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "SERIALIZER": name}
    row = Everything.objects.create(**awkward(author))
    Everything.objects.get(pk=row.pk)
    raw = wait_for(lambda: redis.get(row_keys(LABEL, row.pk).value))
    assert raw is not None
    assert looks_right(raw)


def test_moment_keeps_the_instant(author: Author, redis: Any, django_assert_num_queries: Any) -> None:
    values = awkward(author)
    row = Everything.objects.create(**values)
    _, hit = read_twice(Everything, row.pk, redis, django_assert_num_queries)
    assert hit.moment == values["moment"]
    assert hit.moment.utcoffset() == datetime.timedelta(0)


# -- other primary keys and unique lookups ---------------------------------------


def test_uuid_primary_key(redis: Any, django_assert_num_queries: Any, counts: Any) -> None:
    doc = Document.objects.create(title="UUID ✓")
    orm = models.QuerySet(Document).get(pk=doc.pk)
    miss, hit = read_twice(Document, doc.pk, redis, django_assert_num_queries)
    assert_same_row(miss, orm)
    assert_same_row(hit, orm)
    # The same row by its other spellings is the same key: still no query.
    with django_assert_num_queries(0):
        by_text = Document.objects.get(pk=str(doc.pk))
        by_hex = Document.objects.get(pk=doc.pk.hex)
    assert_same_row(by_text, orm)
    assert_same_row(by_hex, orm)
    assert counts("testapp.document")["hit"] == 3


def test_invalid_uuid_raises_what_the_orm_raises() -> None:
    with pytest.raises(Exception) as orm_error:
        models.QuerySet(Document).get(pk="not-a-uuid")
    with pytest.raises(Exception) as cached_error:
        Document.objects.get(pk="not-a-uuid")
    assert type(cached_error.value) is type(orm_error.value)


@pytest.mark.parametrize("field", ["email", "slug"])
def test_author_by_unique_field(field: str, redis: Any, django_assert_num_queries: Any) -> None:
    author = Author.objects.create(name="Ünïque", email="Zoë.Test+x@example.org", slug="zoe-test", bio="b")
    value = getattr(author, field)
    orm = models.QuerySet(Author).get(**{field: value})

    miss = Author.objects.get(**{field: value})
    assert wait_for(lambda: redis.exists(unique_key("testapp.author", field, value)))
    assert wait_for(lambda: redis.exists(row_keys("testapp.author", author.pk).value))
    with django_assert_num_queries(0):
        hit = Author.objects.get(**{field: value})
        exact = Author.objects.get(**{field + "__exact": value})

    for instance in (miss, hit, exact):
        assert_same_row(instance, orm)


def test_unique_lookup_of_a_missing_value_raises_does_not_exist(author: Author) -> None:
    with pytest.raises(Author.DoesNotExist):
        Author.objects.get(email="nobody@example.org")


@pytest.mark.parametrize("spelling", [str.upper, lambda s: s + " "], ids=["upper", "trailing-space"])
def test_unique_lookup_agrees_with_the_database_collation(spelling: Any, author: Author) -> None:
    # MariaDB's default collation matches these spellings, SQLite's does not: either
    # way the cache must answer exactly as the ORM does, twice (cold and warm).
    value = spelling(author.email)
    try:
        expected: Any = models.QuerySet(Author).get(email=value)
    except Author.DoesNotExist:
        expected = Author.DoesNotExist
    for _ in range(2):
        if expected is Author.DoesNotExist:
            with pytest.raises(Author.DoesNotExist):
                Author.objects.get(email=value)
        else:
            assert_same_row(Author.objects.get(email=value), expected)
        time.sleep(0.05)


def test_none_in_a_nullable_unique_field_goes_to_the_database(django_assert_num_queries: Any) -> None:
    author = Author.objects.create(name="No slug", email="noslug@example.org", slug=None)
    with django_assert_num_queries(1):
        assert Author.objects.get(slug=None).pk == author.pk


# -- corrupt payloads --------------------------------------------------------------


@pytest.fixture
def row(author: Author, redis: Any) -> Everything:
    row = Everything.objects.create(**awkward(author))
    # Fill once so corrupt payloads can be derived from a genuine one.
    Everything.objects.get(pk=row.pk)
    assert wait_for(lambda: redis.exists(row_keys(LABEL, row.pk).value))
    return row


def _genuine(redis: Any, row: Everything) -> list[Any]:
    return list(json.loads(redis.get(row_keys(LABEL, row.pk).value)))


def _with(index_name: str, value: Any) -> Callable[[Any, Everything], bytes]:
    def forge(redis: Any, row: Everything) -> bytes:
        values = _genuine(redis, row)
        values[1 + row_codec(Everything).attnames.index(index_name)] = value
        return json.dumps(values).encode()

    return forge


def _older_schema(redis: Any, row: Everything) -> bytes:
    # What a deploy that has not added the last field yet would have written.
    values = _genuine(redis, row)[:-1]
    values[0] = "0ld5chema0"
    return json.dumps(values).encode()


def _foreign_fingerprint(redis: Any, row: Everything) -> bytes:
    values = _genuine(redis, row)
    values[0] = row_codec(Author).fingerprint
    return json.dumps(values).encode()


def _another_models_row(redis: Any, row: Everything) -> bytes:
    author = models.QuerySet(Author).get(pk=row.author_id)
    return get_serializer("json").dumps(row_codec(Author).encode(author))


def _as_msgpack(redis: Any, row: Everything) -> bytes:
    return bytes(msgpack.packb(_genuine(redis, row)))


CORRUPT = {
    "garbage": lambda redis, row: b"\x00\xff\xfegarbage",
    "empty": lambda redis, row: b"",
    "truncated-json": lambda redis, row: redis.get(row_keys(LABEL, row.pk).value)[:-5],
    "json-object": lambda redis, row: b'{"not": "a row"}',
    "json-string": lambda redis, row: b'"text"',
    "json-null": lambda redis, row: b"null",
    "json-empty-list": lambda redis, row: b"[]",
    "older-schema": _older_schema,
    "foreign-fingerprint": _foreign_fingerprint,
    "another-models-row": _another_models_row,
    "msgpack-while-json": _as_msgpack,
    "bad-datetime": _with("moment", "not a date"),
    "bad-decimal": _with("decimal", "abc"),
    "bad-uuid": _with("uuid", "zz"),
    "bad-json-field": _with("data", "{"),
    "bad-duration-type": _with("duration", "1 day"),
    "bad-date-type": _with("day", [2024, 1, 1]),
    "deeply-nested-json": lambda redis, row: b"[" * 100_000,
    "huge-duration": _with("duration", 10**20),
}
# Known library bugs: these payloads raise instead of being treated as a miss.
CORRUPT_CASES = [
    pytest.param(
        forge,
        id=name,
    )
    for name, forge in CORRUPT.items()
]


def _assert_replaced(redis: Any, key: str, bad: bytes) -> None:
    now = wait_for(lambda: redis.get(key) != bad)
    assert now, "the corrupt payload is still in Redis"
    raw = redis.get(key)
    if raw is not None:
        row_codec(Everything).decode(json.loads(raw), "default")


@pytest.mark.parametrize("forge", CORRUPT_CASES)
def test_corrupt_payload_is_a_counted_miss(
    forge: Any, row: Everything, redis: Any, counts: Any, django_assert_num_queries: Any
) -> None:
    key = row_keys(LABEL, row.pk).value
    bad = forge(redis, row)
    redis.set(key, bad)
    before = counts(LABEL).get("corrupt", 0)

    orm = models.QuerySet(Everything).get(pk=row.pk)

    got = Everything.objects.get(pk=row.pk)

    assert_same_row(got, orm)
    assert counts(LABEL)["corrupt"] > before
    _assert_replaced(redis, key, bad)
    # And the cache heals: the next read is an ordinary hit.
    assert wait_for(lambda: redis.exists(key))
    with django_assert_num_queries(0):
        healed = Everything.objects.get(pk=row.pk)
    assert_same_row(healed, orm)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(CORRUPT[name], id=name)
        for name in ("garbage", "foreign-fingerprint", "msgpack-while-json")
    ],
)
def test_corrupt_payload_in_get_many_is_a_counted_miss(
    forge: Any, row: Everything, redis: Any, counts: Any
) -> None:
    key = row_keys(LABEL, row.pk).value
    bad = forge(redis, row)
    redis.set(key, bad)
    before = counts(LABEL).get("corrupt", 0)

    got = Everything.objects.get_many([row.pk])

    assert list(got) == [row.pk]
    assert_same_row(got[row.pk], models.QuerySet(Everything).get(pk=row.pk))
    assert counts(LABEL)["corrupt"] > before
    _assert_replaced(redis, key, bad)


@pytest.mark.parametrize(
    "pointer",
    [
        lambda other: b"\xffgarbage",
        lambda other: b"[1]",
        lambda other: json.dumps(str(other.pk)).encode(),  # a well-formed pointer to another row
    ],
    ids=["garbage", "list", "other-row"],
)
def test_corrupt_unique_pointer_is_ignored(pointer: Any, author: Author, redis: Any) -> None:
    other = Author.objects.create(name="Other", email="other@example.org", slug="other")
    key = unique_key("testapp.author", "email", author.email)
    redis.set(key, pointer(other))

    got = Author.objects.get(email=author.email)

    assert_same_row(got, models.QuerySet(Author).get(email=author.email))


def test_payload_in_another_serializer_is_a_miss_when_switching(
    settings: Any, row: Everything, redis: Any, counts: Any
) -> None:
    # A rolling deploy that switches SERIALIZER finds the old format in Redis.
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "SERIALIZER": "pickle"}
    got = Everything.objects.get(pk=row.pk)
    assert_same_row(got, models.QuerySet(Everything).get(pk=row.pk))
    assert counts(LABEL)["corrupt"] >= 1
    assert wait_for(lambda: (redis.get(row_keys(LABEL, row.pk).value) or b"").startswith(b"cpP1"))


# -- size limit --------------------------------------------------------------------


def test_values_over_max_value_bytes_are_not_cached(
    settings: Any, redis: Any, counts: Any, django_assert_num_queries: Any
) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "MAX_VALUE_BYTES": 100}
    big = Everything.objects.create(text="x" * 200)
    keys = row_keys(LABEL, big.pk)

    first = Everything.objects.get(pk=big.pk)
    # Not cached, and the fill lease was handed back rather than left to expire.
    assert wait_for(lambda: not redis.exists(keys.lease))
    assert not redis.exists(keys.value)
    assert counts(LABEL)["too_large"] == 1
    with django_assert_num_queries(1):
        second = Everything.objects.get(pk=big.pk)
    assert counts(LABEL)["too_large"] == 2
    for got in (first, second):
        assert_same_row(got, models.QuerySet(Everything).get(pk=big.pk))


def test_values_under_max_value_bytes_are_still_cached(
    settings: Any, redis: Any, django_assert_num_queries: Any, counts: Any
) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "MAX_VALUE_BYTES": 100}
    doc = Document.objects.create(title="t")
    read_twice(Document, doc.pk, redis, django_assert_num_queries)
    assert "too_large" not in counts("testapp.document")
