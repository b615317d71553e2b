"""
Hostile input through the public API (design.md: keys from user input are
normalised; bad input gets a clear answer and loses nothing): a 10 KB parameter
made of non-ASCII and glob characters, a value over ``MAX_VALUE_BYTES``, and a value
the serializer cannot hold. The caller always gets its value; Redis only ever holds
bounded, printable, glob-free keys, and nothing it cannot give back.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest

from cachepatterns_app import cache_aside
from cachepatterns_app.identity import database_identity
from tests.support import cachepatterns, plain_keys, settle, wait_until

pytestmark = pytest.mark.django_db(transaction=True)  # invalidate() acts at once, not at a commit

runs: collections.Counter[str] = collections.Counter()


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    runs.clear()


@cache_aside(key="hostile:echo:{value}", ttl=300)
def echo(value: str) -> str:
    runs["echo"] += 1
    return value


@cache_aside(key="hostile:big:{size}", ttl=300)
def big(size: int) -> str:
    runs["big"] += 1
    return "x" * size


@cache_aside(key="hostile:opaque:{kind}", ttl=300)
def opaque(kind: str) -> Any:
    runs["opaque"] += 1
    return {"kind": kind, "handle": object()}


def stored_keys(redis: Any, template: str) -> list[str]:
    db = database_identity("default")
    return [k.decode() for k in redis.scan_iter(match=f"cpt:{{k:{db}:{template}*", count=1000)]


def test_a_10_kb_parameter_of_glob_and_non_ascii_characters_gets_a_bounded_safe_key(redis, record):
    """
    Fault: a 10 KB key parameter made of glob characters, braces and non-ASCII text
    ("*?[]{}é日😀" repeated), next to a short neighbour "*" that a glob-based
    invalidation of it would match.
    Expected: the result is cached under one short, printable, glob-free key with one
    hash tag; the second call is a hit; invalidating the long one leaves the neighbour
    cached.
    Observed: one computation per value until the invalidation, a stored key far
    shorter than the parameter, the neighbour still a hit.
    """
    hostile = ("*?[]{}é日😀" * 1200)[:10_000]
    neighbour = "*"
    assert echo(hostile) == hostile
    assert echo(neighbour) == neighbour
    settle()
    assert echo(hostile) == hostile
    assert echo(neighbour) == neighbour
    assert runs["echo"] == 2  # both hits the second time

    keys = stored_keys(redis, "hostile:echo:")
    assert len(keys) == 2
    for key in keys:
        assert key.isascii()
        assert key.isprintable()
        assert not set(key) & set(" *?[]\n\t")
        assert key.count("{") == 1
        assert key.count("}") == 1
    longest = max(len(k) for k in keys)
    assert longest < 200
    record(parameter_bytes=len(hostile.encode()), longest_key_chars=longest)

    echo.invalidate(value=hostile)  # type: ignore[attr-defined]
    assert echo(neighbour) == neighbour
    assert runs["echo"] == 2, "invalidating the long value dropped its neighbour"
    assert echo(hostile) == hostile
    assert runs["echo"] == 3


def test_a_value_over_max_value_bytes_is_returned_and_never_cached(redis, counts, record):
    """
    Fault: a decorated function returns 64 KB while MAX_VALUE_BYTES is 4 KB.
    Expected: every caller gets the whole value; nothing is stored (no value key, no
    lease left behind); the refusal is counted as too_large; a small result of the
    same function is still cached.
    Observed: two computations for two calls of the large value, no key in Redis, the
    small one a hit.
    """
    with cachepatterns(MAX_VALUE_BYTES=4096):
        assert big(65_536) == "x" * 65_536
        settle()
        assert big(65_536) == "x" * 65_536
        assert runs["big"] == 2
        assert big(10) == "x" * 10
        settle()
        assert big(10) == "x" * 10
        assert runs["big"] == 3
    large = plain_keys(big.key(size=65_536))  # type: ignore[attr-defined]
    assert not redis.exists(large.value), "the large value was stored"
    # Its fill lease was given back (fire-and-forget), or expires with LOCK_TIMEOUT.
    assert wait_until(lambda: not redis.exists(large.lease)), "the large value's lease outlived its lifetime"
    keys = stored_keys(redis, "hostile:big:")
    assert keys == [plain_keys(big.key(size=10)).value]  # type: ignore[attr-defined]  # the small value alone
    refused = counts("hostile:big:{size}").get("too_large", 0)
    assert refused >= 1  # every computed large value; a call that found the lease held skips the encode
    record(too_large=refused, keys_stored=len(keys))


def test_a_value_the_serializer_cannot_hold_is_returned_and_never_cached(redis, counts, record):
    """
    Fault: a decorated function returns a dict holding an arbitrary object (no JSON
    form, and pickle is not enabled).
    Expected: the caller gets that very value each time, no error page; nothing is
    stored; the error is counted.
    Observed: the object returned by each call, two computations, no key in Redis.
    """
    first = opaque("a")
    second = opaque("a")
    assert first["kind"] == second["kind"] == "a"
    assert type(first["handle"]) is object
    assert runs["opaque"] == 2
    assert stored_keys(redis, "hostile:opaque:") == []
    errors = counts("hostile:opaque:{kind}").get("error", 0)
    assert errors == 2
    record(errors_counted=errors)
