"""Tests for ``cachepatterns_app.serializers``: round trips, and pickle refusing unsigned data."""

from __future__ import annotations

import datetime
import decimal
import pickle
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from cachepatterns_app.exceptions import ConfigurationError, SerializationError
from cachepatterns_app.serializers import (
    JSONSerializer,
    MsgpackSerializer,
    SignedPickleSerializer,
    get_serializer,
)

# Floats without NaN: NaN != NaN would make equality meaningless (it does survive).
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
)
JSON_TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)
# msgpack integers are 64-bit.
MSGPACK_TREES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
    ),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


def assert_same(a: Any, b: Any) -> None:
    """Assert equal *and* of the same types all the way down (True == 1 is not enough)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float):
        assert repr(a) == repr(b)  # tells -0.0 from 0.0
    else:
        assert a == b


@given(JSON_TREES)
def test_json_round_trip(value: Any) -> None:
    serializer = JSONSerializer()
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    assert_same(serializer.loads(data), value)


@given(MSGPACK_TREES)
def test_msgpack_round_trip(value: Any) -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    assert_same(serializer.loads(data), value)


@given(JSON_TREES)
def test_signed_pickle_round_trip(value: Any) -> None:
    serializer = SignedPickleSerializer()
    assert_same(serializer.loads(serializer.dumps(value)), value)


def test_signed_pickle_round_trips_what_json_cannot() -> None:
    value = {
        "when": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        "amount": decimal.Decimal("-1.500000"),
        "tags": {"a", "b"},
        "pair": (1, 2),
    }
    serializer = SignedPickleSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_json_is_compact_utf8() -> None:
    assert JSONSerializer().dumps({"k": ["é", 1]}) == '{"k":["é",1]}'.encode()


@pytest.mark.parametrize("serializer", [JSONSerializer(), MsgpackSerializer()], ids=["json", "msgpack"])
def test_unencodable_values_raise_serialization_error(serializer: Any) -> None:
    with pytest.raises(SerializationError):
        serializer.dumps({"x": object()})


def test_pickle_unpicklable_value_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        SignedPickleSerializer().dumps(lambda: 1)


@pytest.mark.parametrize(
    ("serializer", "data"),
    [
        (JSONSerializer(), b"\xff\xfe not json"),
        (JSONSerializer(), b'{"a": '),
        (JSONSerializer(), b""),
        (MsgpackSerializer(), b"\xc1"),  # a byte msgpack never uses
        (MsgpackSerializer(), b"\x92\x01"),  # array of 2 with 1 element
        (MsgpackSerializer(), b'{"a":1}'),  # JSON is not msgpack (trailing data)
    ],
    ids=["json-binary", "json-truncated", "json-empty", "msgpack-bad-byte", "msgpack-short", "msgpack-json"],
)
def test_garbage_raises_serialization_error(serializer: Any, data: bytes) -> None:
    with pytest.raises(SerializationError):
        serializer.loads(data)


# -- signed pickle refuses before unpickling ------------------------------------

UNPICKLED: list[str] = []


def _record(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Booby:
    """Unpickling this calls ``_record``: a stand-in for an attacker's payload."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _record, ("unpickled",)


@pytest.fixture
def unpickled() -> list[str]:
    UNPICKLED.clear()
    return UNPICKLED


def test_booby_trap_works(unpickled: list[str]) -> None:
    # The control: without the signature check this payload has a side effect.
    pickle.loads(pickle.dumps(Booby()))
    assert unpickled == ["unpickled"]


def test_signed_booby_trap_is_unpickled(unpickled: list[str]) -> None:
    serializer = SignedPickleSerializer()
    assert serializer.loads(serializer.dumps(Booby())) == "unpickled"
    assert unpickled == ["unpickled"]


def _signed() -> bytes:
    return SignedPickleSerializer().dumps(Booby())


@pytest.mark.parametrize(
    "forge",
    [
        lambda: pickle.dumps(Booby()),
        lambda: b"cpP1" + pickle.dumps(Booby()),
        lambda: b"cpP1" + b"\x00" * 32 + pickle.dumps(Booby()),
        lambda: _signed()[:-1],
        lambda: _signed()[:20],
        lambda: _signed()[:4],
        lambda: _signed() + b".",
        lambda: _signed()[:10] + bytes([_signed()[10] ^ 1]) + _signed()[11:],
        lambda: _signed()[:-3] + bytes([_signed()[-3] ^ 1]) + _signed()[-2:],
        lambda: b"",
    ],
    ids=[
        "unsigned",
        "magic-only",
        "zero-signature",
        "truncated-end",
        "truncated-signature",
        "magic-alone",
        "extended",
        "tampered-signature",
        "tampered-body",
        "empty",
    ],
)
def test_pickle_refuses_bad_payloads_before_unpickling(forge: Any, unpickled: list[str]) -> None:
    data = forge()
    with pytest.raises(SerializationError, match="refusing to unpickle"):
        SignedPickleSerializer().loads(data)
    assert unpickled == []


def test_pickle_signed_with_another_secret_key_is_refused(unpickled: list[str]) -> None:
    with override_settings(SECRET_KEY="someone-else's-secret"):
        foreign = SignedPickleSerializer().dumps(Booby())
    with pytest.raises(SerializationError, match="bad signature"):
        SignedPickleSerializer().loads(foreign)
    assert unpickled == []
    # ...and it is the key, not the payload, that made the difference.
    with override_settings(SECRET_KEY="someone-else's-secret"):
        assert SignedPickleSerializer().loads(foreign) == "unpickled"
    assert unpickled == ["unpickled"]


# -- lookup -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("json", JSONSerializer), ("msgpack", MsgpackSerializer), ("pickle", SignedPickleSerializer)],
)
def test_get_serializer_returns_a_shared_instance(name: str, cls: type) -> None:
    serializer = get_serializer(name)
    assert isinstance(serializer, cls)
    assert serializer.name == name
    assert get_serializer(name) is serializer


@pytest.mark.parametrize("name", ["yaml", "JSON", "", "serializers.json"])
def test_get_serializer_unknown_name_raises_configuration_error(name: str) -> None:
    with pytest.raises(ConfigurationError, match="must be one of json, msgpack, pickle"):
        get_serializer(name)
