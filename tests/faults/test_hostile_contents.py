"""
Hostile contents planted in Redis (rule 9): whatever sits under a row's key, and under
a decorator's key, is used only once proven to be the requested value in the current
format. A malicious pickle (whose unpickling would run code) and garbage JSON are
corrupt: never executed, deleted, counted, answered from the database.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside
from tests.support import PrivateRedis, keys_of, plain_keys, private_redis, wait_until
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

RAN: list[str] = []


def _run(tag: str) -> str:
    RAN.append(tag)
    return tag


class Payload:
    """Unpickling this calls ``_run``: an attacker's code, made observable."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _run, ("attacker code ran",)


MALICIOUS = pickle.dumps(Payload())
GARBAGE = {
    "malicious pickle": MALICIOUS,
    "garbage JSON": b'{"not": "a row", ',
    "valid JSON, wrong shape": b'["Ada", 1, 2, 3]',
    "random bytes": bytes(range(256)),
}


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    RAN.clear()
    with private_redis() as server, override_settings(CACHES=server.caches(socket_timeout=5.0)):
        yield server


@cache_aside(key="hostile:{n}")
def doubled(n: int) -> dict[str, int]:
    return {"n": n * 2}


def test_the_planted_payload_runs_code_when_unpickled() -> None:
    """
    Fault: none (the control): the payload planted by the next tests, unpickled directly.
    Expected: unpickling it runs the attacker's function, so "no code ran" below can fail.
    Observed: the function ran once.
    """
    RAN.clear()
    pickle.loads(MALICIOUS)
    assert RAN == ["attacker code ran"]


@pytest.mark.parametrize("planted", list(GARBAGE), ids=list(GARBAGE))
def test_hostile_bytes_under_a_row_key_are_a_miss(server, planted, counts, record):
    """
    Fault: a malicious pickle, garbage JSON, well-formed JSON of the wrong shape or random bytes
    written straight into Redis under a cached row's key.
    Expected: the read returns the database's row (1 query), no planted code runs, the planted
    value is gone from Redis afterwards, and it is counted as corrupt.
    Observed: the row read with 1 query, nothing ran, the planted bytes replaced or deleted,
    corrupt counted.
    """
    ada = Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    Author.objects.get(pk=ada.pk)
    keys = keys_of(Author, ada.pk)
    assert wait_until(lambda: server.client.exists(keys.value))
    server.client.set(keys.value, GARBAGE[planted])

    with CaptureQueriesContext(connection) as queries:
        got = Author.objects.get(pk=ada.pk)
    assert (got.pk, got.name) == (ada.pk, "Ada")
    assert len(queries) == 1, queries.captured_queries
    assert RAN == []
    assert wait_until(lambda: server.client.get(keys.value) != GARBAGE[planted])
    corrupt = counts("testapp.author").get("corrupt", 0)
    assert corrupt >= 1
    record(queries=len(queries), code_ran=len(RAN), corrupt=corrupt)


@pytest.mark.parametrize("planted", list(GARBAGE), ids=list(GARBAGE))
def test_hostile_bytes_under_a_decorator_key_are_a_miss(server, planted, record):
    """
    Fault: the same hostile bytes written into Redis under a @cache_aside function's key.
    Expected: the function runs again and its true value is returned, no planted code runs,
    the planted value is gone from Redis afterwards.
    Observed: the computed value returned, nothing ran, the planted bytes replaced or deleted.
    """
    assert doubled(21) == {"n": 42}
    key = plain_keys("hostile:21").value
    assert wait_until(lambda: server.client.exists(key))
    server.client.set(key, GARBAGE[planted])

    assert doubled(21) == {"n": 42}
    assert RAN == []
    assert wait_until(lambda: server.client.get(key) != GARBAGE[planted])
    record(code_ran=len(RAN))
