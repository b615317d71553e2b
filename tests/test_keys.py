"""Tests for ``cachepatterns_app.keys``: normalisation, key text, templates, hash tags."""

from __future__ import annotations

import datetime
import decimal
import enum
import re
import string
import time
import uuid
from typing import Any

import pytest
from django.db import models
from hypothesis import assume, given
from hypothesis import strategies as st
from redis.crc import key_slot

from cachepatterns_app.codecs import row_codec
from cachepatterns_app.keys import (
    KeyTemplate,
    family_keys,
    key_part,
    model_label,
    normalise,
    plain_keys,
    row_keys,
    unique_key,
)
from cachepatterns_app.registry import row_cache_for
from tests.support import keys_of
from tests.testapp.models import Author, AuthorProxy, Document, Everything

DB = "dbtoken1"

SAFE = set(string.ascii_letters + string.digits + "_.@-")
FORBIDDEN = set("{} \t\r\n*?[]:")

# Text that tends to break naive key builders, mixed into hypothesis' own text.
AWKWARD = st.sampled_from(
    [
        "",
        " ",
        "a b",
        "*",
        "user:*",
        "?",
        "[a-z]",
        "{tag}",
        "}{",
        ":",
        "a:b",
        "\x00",
        "\n",
        "é",
        "e\u0301",
        "日本語",
        "😀",
        "~",
        "~abc",
        "a" * 64,
        "a" * 65,
        "a" * 1000,
        "a" * 1000 + "b",
    ]
)
TEXT = st.one_of(AWKWARD, st.text(), st.text(alphabet="ab :{}*~", max_size=80))


def hash_tag(key: str) -> str:
    """Return the part of ``key`` Redis Cluster hashes (the cluster spec's rule)."""
    start = key.find("{")
    if start == -1:
        return key
    end = key.find("}", start + 1)
    if end == -1 or end == start + 1:
        return key
    return key[start + 1 : end]


# -- normalise --------------------------------------------------------------------


@given(st.lists(TEXT, min_size=2, max_size=8, unique=True))
def test_normalise_is_injective(texts: list[str]) -> None:
    assert len({normalise(t) for t in texts}) == len(texts)


@given(TEXT)
def test_normalise_output_is_safe_and_bounded(text: str) -> None:
    out = normalise(text)
    assert out
    assert out.isascii()
    assert out.isprintable()
    assert not set(out) & FORBIDDEN
    assert len(out) <= 64


@given(TEXT)
def test_a_kept_part_never_equals_a_hashed_part(text: str) -> None:
    # Injectivity across the two branches rests on this: a hashed output is not
    # itself safe, so no input can be kept as that exact text.
    out = normalise(text)
    if out == text:
        assert set(text) <= SAFE
    else:
        assert not set(out) <= SAFE
        assert normalise(out) != out


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a" * 64, "a" * 65),
        ("a" * 500 + "b", "a" * 500 + "c"),
        ("é", "e\u0301"),  # NFC vs NFD: different text, so different keys
        ("A", "a"),
        ("a b", "a_b"),
        ("user:1", "user.1"),
        ("\ud800", "\udc00"),  # lone surrogates must not crash or collide
    ],
)
def test_normalise_keeps_near_misses_apart(a: str, b: str) -> None:
    assert normalise(a) != normalise(b)


def test_normalise_keeps_short_safe_text_readable() -> None:
    for text in ("hello", "a.b-c_d@e", "x" * 64, "v2", "1.5"):
        assert normalise(text) == text


def test_normalise_hashes_text_that_spells_an_integer() -> None:
    # So that the string "42" and the integer 42 never share a key.
    for text in ("42", "-7", "007"):
        assert normalise(text).startswith("~")


def test_normalise_hashes_into_the_documented_alphabet() -> None:
    assert re.fullmatch(r"~[a-z2-7]{26}", normalise("not safe"))


# -- key_part ---------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [("text", "text"), (42, "42"), (-7, "-7"), (Colour.RED, "red"), (Colour.BLUE, "2")],
)
def test_key_part_keeps_safe_strings_and_integers_readable(value: Any, expected: str) -> None:
    assert key_part(value, "p") == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        None,
        1.5,
        decimal.Decimal("1.500"),
        uuid.UUID(int=1),
        datetime.date(2024, 2, 29),
        datetime.time(23, 59, 59, 5),
        datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
        (1, "a"),
        10**70,
        "a b",
    ],
)
def test_key_part_hashes_everything_else_into_the_documented_alphabet(value: Any) -> None:
    assert re.fullmatch(r"~[a-z2-7]{26}", key_part(value, "p"))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, "1"),
        (True, 1),
        (False, 0),
        (True, "True"),
        (None, "None"),
        (1.0, 1),
        (1.5, "1.5"),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (decimal.Decimal("1"), 1),
        (0.0, -0.0),
        (uuid.UUID(int=1), str(uuid.UUID(int=1))),
        (uuid.UUID(int=1), uuid.UUID(int=1).hex),
        (datetime.date(2024, 1, 1), "2024-01-01"),
        (("a", "b"), "(a,b)"),
        (("a,b",), ("a", "b")),
        (("(a)",), (("a",),)),
        (("a", "b,c"), ("a,b", "c")),
        ((1,), 1),
        ((), ""),
    ],
)
def test_key_part_keys_distinct_arguments_apart(a: Any, b: Any) -> None:
    assert key_part(a) != key_part(b)


def test_key_part_uses_a_saved_instance_pk() -> None:
    assert key_part(Author(pk=7, email="x@example.com"), "author") == key_part(7)


def test_key_part_treats_str_and_int_subclasses_as_their_values() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    assert key_part(Text("abc")) == key_part("abc") == "abc"
    assert key_part(Number(7)) == key_part(7) == "7"


def test_key_part_rejects_an_unsaved_instance_naming_the_parameter() -> None:
    with pytest.raises(TypeError, match=r"'author'.*unsaved"):
        key_part(Author(email="x@example.com"), "author")


@pytest.mark.parametrize(
    "value",
    [[1], {"a": 1}, {1}, frozenset({1}), b"bytes", object(), (1, [2]), lambda: 1],
    ids=["list", "dict", "set", "frozenset", "bytes", "object", "tuple-with-list", "function"],
)
def test_key_part_rejects_unstable_types_naming_the_parameter(value: Any) -> None:
    with pytest.raises(TypeError, match="'user_id'"):
        key_part(value, "user_id")


SCALARS = st.one_of(
    st.text(),
    AWKWARD,
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.dates(),
    st.times(),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.from_regex(r"-?[0-9]{1,5}", fullmatch=True),
)
ARGUMENTS = st.recursive(SCALARS, lambda inner: st.tuples(inner) | st.tuples(inner, inner), max_leaves=4)


def _same(a: Any, b: Any) -> bool:
    """Whether two arguments are the same argument: same type and the same text."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | decimal.Decimal | datetime.date | datetime.time):
        return repr(a) == repr(b)
    return bool(a == b)


@given(ARGUMENTS, ARGUMENTS)
def test_distinct_arguments_never_share_a_key_part(a: Any, b: Any) -> None:
    assume(not _same(a, b))
    assert key_part(a) != key_part(b)


@given(ARGUMENTS)
def test_key_parts_are_safe_and_bounded(value: Any) -> None:
    part = key_part(value)
    assert 1 <= len(part) <= 64
    assert set(part) <= SAFE | {"~"}


# -- KeyTemplate ------------------------------------------------------------------


@pytest.mark.parametrize("template", ["user:{{id}}", "a}}b", "{{", "x:{id}:}}"])
def test_template_rejects_literal_braces(template: str) -> None:
    with pytest.raises(ValueError, match="literal brace") as info:
        KeyTemplate(template)
    assert repr(template) in str(info.value)


@pytest.mark.parametrize("template", ["user:{id", "user:id}", "a{b", "}"])
def test_template_rejects_unbalanced_braces_helpfully(template: str) -> None:
    with pytest.raises(ValueError, match="brace") as info:
        KeyTemplate(template)
    assert repr(template) in str(info.value)


@pytest.mark.parametrize("template", ["{a}{b}", "x:{a}{b}:y", "{a}-{b}", "{a}_{b}", "{a}.x@y{b}"])
def test_template_rejects_placeholders_without_a_separator(template: str) -> None:
    with pytest.raises(ValueError, match="no separator") as info:
        KeyTemplate(template)
    assert repr(template) in str(info.value)


@pytest.mark.parametrize("template", ["{a}:{b}", "{a}/{b}", "{a}-:-{b}", "{a} {b}", "{a}é{b}", "{a}:{a}"])
def test_template_accepts_placeholders_with_a_separator(template: str) -> None:
    assert set(KeyTemplate(template).fields) <= {"a", "b"}


@pytest.mark.parametrize(
    "template",
    ["user:{user.id}", "user:{ids[0]}", "user:{id!r}", "user:{id:>5}", "user:{}", "user:{0}", "{ id }"],
)
def test_template_rejects_non_plain_placeholders(template: str) -> None:
    with pytest.raises(ValueError, match="plain parameter name") as info:
        KeyTemplate(template)
    assert repr(template) in str(info.value)


def test_template_lists_its_fields_once_in_order() -> None:
    template = KeyTemplate("user:{user_id}:posts:page:{page}:again:{user_id}")
    assert template.fields == ("user_id", "page")


def test_template_missing_parameter_names_it() -> None:
    template = KeyTemplate("user:{user_id}:page:{page}")
    with pytest.raises(TypeError, match="'page'"):
        template.format({"user_id": 1})


def test_template_unkeyable_parameter_names_it() -> None:
    with pytest.raises(TypeError, match="'user_id'"):
        KeyTemplate("user:{user_id}").format({"user_id": [1, 2]})


def test_template_normalises_user_input() -> None:
    key = KeyTemplate("search:{q}:page:{page}").format({"q": "*} {evil:[x]", "page": 2})
    assert key.startswith("search:~")
    assert key.endswith(":page:2")
    assert not set(key) & (FORBIDDEN - {":"})


NAMES = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=4, unique=True)
# Separators must hold a character outside the safe set; "~" (the hash mark) is the
# nastiest one since hashed values start with it.
SEPARATORS = st.tuples(st.text(alphabet="ab_.-", max_size=2), st.sampled_from(":/~| é")).map("".join)
LITERALS = st.text(alphabet="abc:/~._-", max_size=4)
VALUES = st.one_of(TEXT, st.integers(), st.none(), st.booleans(), st.uuids(), st.floats(allow_nan=False))


@st.composite
def templates(draw: st.DrawFn) -> tuple[KeyTemplate, list[str]]:
    names = draw(NAMES)
    parts = [draw(LITERALS)]
    for i, name in enumerate(names):
        if i:
            parts.append(draw(SEPARATORS))
        parts.append("{" + name + "}")
    parts.append(draw(LITERALS))
    return KeyTemplate("".join(parts)), names


@given(st.data())
def test_different_params_never_format_to_the_same_key(data: st.DataObject) -> None:
    template, names = data.draw(templates())
    first = {name: data.draw(VALUES) for name in names}
    second = {name: data.draw(VALUES) for name in names}
    assume(not all(_same(first[n], second[n]) for n in names))
    assert template.format(first) != template.format(second)


@given(st.data())
def test_templates_differing_only_in_one_value_differ(data: st.DataObject) -> None:
    # Random pairs rarely differ in exactly one place; this targets that case.
    template, names = data.draw(templates())
    params = {name: data.draw(VALUES) for name in names}
    changed = data.draw(st.sampled_from(names))
    other = data.draw(VALUES)
    assume(not _same(other, params[changed]))
    assert template.format(params) != template.format({**params, changed: other})


# -- Redis Cluster hash tags --------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("cp:{a.b:1}:l", "a.b:1"),
        ("no-tag", "no-tag"),
        ("{}x{y}", "{}x{y}"),
        ("a{b}{c}", "b"),
        ("a{b", "a{b"),
    ],
)
def test_hash_tag_helper_follows_the_spec(key: str, tag: str) -> None:
    # The helper itself is checked against redis-py's slot function, so a wrong
    # reading of the spec here cannot make the tests below pass by accident.
    assert hash_tag(key) == tag
    assert key_slot(key.encode()) == key_slot(tag.encode())


PKS = st.one_of(st.integers(), TEXT, st.uuids())


@given(PKS)
def test_row_keys_share_one_hash_tag(pk: Any) -> None:
    keys = row_keys("testapp.everything", DB, pk)
    tags = {hash_tag(keys.value), hash_tag(keys.lease), hash_tag(keys.version)}
    assert len(tags) == 1
    (tag,) = tags
    assert tag != keys.value, "the row key must carry a hash tag"
    assert tag.startswith(f"{DB}:testapp.everything:")
    assert len({keys.value, keys.lease, keys.version}) == 3
    assert len({key_slot(k.encode()) for k in (keys.value, keys.lease, keys.version)}) == 1


@given(PKS, PKS)
def test_row_keys_of_distinct_pks_differ(a: Any, b: Any) -> None:
    assume(not _same(a, b))
    assert row_keys("testapp.author", DB, a).value != row_keys("testapp.author", DB, b).value


def test_row_keys_of_distinct_databases_differ() -> None:
    assert row_keys("testapp.author", "aaaaaaaa", 1).value != row_keys("testapp.author", "bbbbbbbb", 1).value


@given(TEXT)
def test_row_keys_never_leak_braces_from_the_pk(pk: str) -> None:
    key = row_keys("testapp.author", DB, pk).value
    assert key.count("{") == 1
    assert key.count("}") == 1
    assert key.endswith("}")


def test_row_keys_of_different_models_differ() -> None:
    assert row_keys("testapp.author", DB, 1).value != row_keys("testapp.document", DB, 1).value


@given(TEXT)
def test_unique_pointer_never_equals_a_row_key(value: str) -> None:
    pointer = unique_key("testapp.author", DB, "email", value)
    assert hash_tag(pointer) != pointer
    assert pointer != row_keys("testapp.author", DB, value).value
    assert pointer != row_keys("testapp.author", DB, "email=" + value).value


@given(TEXT)
def test_plain_keys_share_one_hash_tag(key: str) -> None:
    keys = plain_keys(DB, KeyTemplate("k:{x}").format({"x": key}))
    assert hash_tag(keys.value) == hash_tag(keys.lease) == hash_tag(keys.version) != keys.value
    assert len({keys.value, keys.lease, keys.version}) == 3


@given(st.integers(min_value=0), TEXT)
def test_family_keys_share_one_hash_tag(generation: int, member: str) -> None:
    family = family_keys(DB, KeyTemplate("user:{id}:posts").format({"id": member}))
    value, lease = family.member(generation, "page:" + normalise(member))
    assert hash_tag(family.generation) == hash_tag(value) == hash_tag(lease) != value


def test_keys_use_the_configured_prefix(settings: Any) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "KEY_PREFIX": "other"}
    assert row_keys("testapp.author", DB, 1).value.startswith("other:{")


# -- proxies ------------------------------------------------------------------------


def test_proxy_and_concrete_model_share_label_keys_and_layout() -> None:
    assert model_label(AuthorProxy) == model_label(Author) == "testapp.author"
    proxy_cache, concrete_cache = row_cache_for(AuthorProxy), row_cache_for(Author)
    assert proxy_cache is not None
    assert concrete_cache is not None
    assert proxy_cache.keys(7, "default") == concrete_cache.keys(7, "default")
    # Same fingerprint: a row filled through one is readable through the other.
    assert row_codec(AuthorProxy).fingerprint == row_codec(Author).fingerprint


def test_distinct_models_have_distinct_fingerprints() -> None:
    prints = {row_codec(m).fingerprint for m in (Author, Document, Everything)}
    assert len(prints) == 3


@pytest.mark.django_db(transaction=True)
def test_proxy_hits_the_row_its_concrete_model_filled(redis: Any, django_assert_num_queries: Any) -> None:
    author = Author.objects.create(name="Ada", email="ada@example.com")
    Author.objects.get(pk=author.pk)
    key = keys_of(Author, author.pk).value
    assert _wait_for(lambda: redis.exists(key))
    with django_assert_num_queries(0):
        proxied = AuthorProxy.objects.get(pk=author.pk)
    assert proxied.pk == author.pk
    assert proxied.email == "ada@example.com"


@pytest.mark.django_db(transaction=True)
def test_proxy_get_returns_proxy_instances_like_the_orm(redis: Any) -> None:
    author = Author.objects.create(name="Ada", email="ada@example.com")
    orm = models.QuerySet(AuthorProxy).get(pk=author.pk)
    miss = AuthorProxy.objects.get(pk=author.pk)
    assert _wait_for(lambda: redis.exists(keys_of(Author, author.pk).value))
    hit = AuthorProxy.objects.get(pk=author.pk)
    by_email = AuthorProxy.objects.get(email="ada@example.com")
    assert type(orm) is AuthorProxy
    assert [type(miss), type(hit), type(by_email)] == [AuthorProxy] * 3


def _wait_for(condition: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
