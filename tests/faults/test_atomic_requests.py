"""
A view under ``ATOMIC_REQUESTS`` that writes and then raises: Django rolls the
request's transaction back, so the write's invalidation must never be sent (rule 2),
and the cached row stays what the database holds. Counted on a private Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection, models
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from tests.support import PrivateRedis, keys_of, private_redis, wait_until
from tests.testapp.models import Author

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.faults.urls")]


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with private_redis() as server, override_settings(CACHES=server.caches(socket_timeout=5.0)):
        yield server


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # Django reads ATOMIC_REQUESTS from the connection's settings at each request.
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


def test_an_atomic_request_view_raising_after_a_write_invalidates_nothing(server, atomic_requests, record):
    """
    Fault: a view under ATOMIC_REQUESTS renames a cached author, then raises.
    Expected: the response is the view's own 500, the rename rolled back, no DEL/UNLINK reaches
    Redis and the row's value and version keys are unchanged, and the next read is a hit
    (0 queries) with the database's value.
    Observed: status 500, the DB name still "Ada", 0 DEL/UNLINK on the server during the request,
    the row's keys byte-identical (DUMP), the next read served from the cache with 0 queries.
    """
    from django.test import Client

    ada = Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    client = Client(raise_request_exception=False)
    # Filled outside any transaction: whether a read inside one may fill depends on the
    # database's isolation level (on SQLite it does not), which is not what this tests.
    Author.objects.get(pk=ada.pk)
    keys = keys_of(Author, ada.pk)
    assert wait_until(lambda: server.client.exists(keys.value))
    entry = [server.client.dump(key) for key in (keys.value, keys.version)]
    calls = server.command_calls()

    response = client.post(f"/author/{ada.pk}/fail/", {"name": "Countess"})

    assert response.status_code == 500
    assert models.QuerySet(Author).get(pk=ada.pk).name == "Ada"
    after = server.command_calls()
    changed = {name: after.get(name, 0) - calls.get(name, 0) for name in after}
    deletes = {k: n for k, n in changed.items() if k in ("del", "unlink") and n}
    assert deletes == {}, changed
    # An invalidation is a DEL or a script bumping the row's version (other scripts, such
    # as the statistics flush, may run meanwhile): the row's keys must be byte-identical.
    assert [server.client.dump(key) for key in (keys.value, keys.version)] == entry
    with CaptureQueriesContext(connection) as queries:
        assert Author.objects.get(pk=ada.pk).name == "Ada"
    assert len(queries) == 0, queries.captured_queries
    record(status=response.status_code, del_or_unlink=0, row_keys_changed=0)
