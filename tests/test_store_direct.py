"""
Script calls on a plain standalone client go to a pooled connection directly (not
through redis-py's ``execute_command``): they must keep what that gave them, proven
against the real Redis: the pool gets its connection back, a connection that fails
is retried on a new one, a flushed script cache is reloaded, and clients that need
redis-py's own path (a single-connection client, a cluster) still get it.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py

from cachepatterns_app import store as store_module
from cachepatterns_app.patterns.write_behind.rows import WriteBehindRowCache
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch: Any) -> list[str]:
    """The commands this process writes to any redis-py connection, by name (not the server's
    counters: other clients of the same server, such as a Celery worker, run scripts too)."""
    from redis.connection import AbstractConnection

    names: list[str] = []
    original = AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        # Every command leaves through here, packed: read the names back out of the
        # protocol (a pipeline sends several in one buffer).
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        names.extend(_names(packed.encode() if isinstance(packed, str) else packed))
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return names


def _names(packed: bytes) -> list[str]:
    """The command names in a buffer of RESP arrays of bulk strings."""
    names, at = [], 0
    while at < len(packed):
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        for index in range(count):
            end = packed.index(b"\r\n", at)
            size, at = int(packed[at + 1 : end]), end + 2
            if index == 0:
                names.append(packed[at : at + size].decode().upper())
            at += size + 2
    return names


def in_use(client: Any) -> int:
    pool = client.connection_pool
    return len(getattr(pool, "_in_use_connections", ()))


@pytest.fixture
def direct(redis: Any) -> Any:
    store = store_module.get_store("default")
    if store._direct(store.client) is None:
        pytest.skip("the test cache's client is not a plain standalone redis-py client")
    return store


def test_a_save_is_one_script_call_and_gives_its_connection_back(direct, redis, sent):
    cache: WriteBehindRowCache = row_cache_for(Counter)  # type: ignore[assignment]
    Counter(name="loads the script").save()
    queued = cache.queue("default").length()
    sent.clear()
    for i in range(20):
        Counter(name=f"c{i}").save()
    assert sent == ["EVALSHA"] * 20
    assert cache.queue("default").length() - queued == 20
    assert in_use(direct.client) == 0


def client_like(redis: Any, retries: int) -> Any:
    """A plain client of the test Redis whose connections retry ``retries`` times."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = redis.connection_pool
    # The same server, by TCP or (embedded Redis) by its Unix socket.
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), retries)}
    return redis_py.Redis(
        connection_pool=redis_py.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )


def drop_first_send(monkeypatch: Any, client: Any) -> list[str]:
    """Make the first EVALSHA send fail as a connection the server dropped does."""
    conn = client.connection_pool.get_connection()
    client.connection_pool.release(conn)
    original = type(conn).send_packed_command
    failures: list[str] = []

    def drop_once(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        packed = command if isinstance(command, bytes) else b"".join(command)
        if _names(packed)[:1] == ["EVALSHA"] and not failures:
            failures.append("EVALSHA")
            self.disconnect()
            raise redis_py.ConnectionError("connection reset by peer (injected)")
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(type(conn), "send_packed_command", drop_once)
    return failures


def test_a_failed_attempt_is_retried_on_a_new_connection_as_the_retry_policy_says(direct, redis, monkeypatch):
    client = client_like(redis, retries=1)
    sha = client.script_load("return redis.call('INCR', KEYS[1])")
    key = "cp-test:direct:retried"
    redis.delete(key)
    failures = drop_first_send(monkeypatch, client)
    try:
        # INCR's reply 1: the script ran exactly once, on the retry.
        assert store_module._direct_evalsha(client)(sha, 1, key) == 1
        assert failures == ["EVALSHA"], "the injected failure ran"
        assert redis.get(key) == b"1"
        assert in_use(client) == 0
    finally:
        redis.delete(key)
        client.close()


def test_without_retries_a_failed_call_raises_and_trips_nothing_else(direct, redis, monkeypatch):
    """The django-redis default (no retries): the save falls back as configured, the pool is whole."""
    cache: WriteBehindRowCache = row_cache_for(Counter)  # type: ignore[assignment]
    stream = cache.wb_keys("default").stream
    queued = redis.xlen(stream)  # the raw client: the breaker opens below
    failures = drop_first_send(monkeypatch, direct.client)
    counter = Counter(name="fell back")
    counter.save()  # ON_CACHE_FAILURE = "sync": written to the database directly
    assert failures == ["EVALSHA"]
    assert redis.xlen(stream) == queued, "nothing was queued"
    assert in_use(direct.client) == 0
    from django.db import models

    assert models.QuerySet(Counter).get(pk=counter.pk).name == "fell back"


def test_a_flushed_script_cache_is_reloaded(direct, redis):
    Counter(name="before").save()
    redis.script_flush()
    counter = Counter(name="after")
    counter.save()
    assert Counter.objects.get(pk=counter.pk).name == "after"


def test_an_error_reply_leaves_the_connection_usable(direct, redis):
    with pytest.raises(redis_py.ResponseError):
        direct._direct(direct.client)(direct._sha("wb_write"), 1, "only-one-key")
    assert in_use(direct.client) == 0
    counter = Counter(name="still fine")
    counter.save()
    assert Counter.objects.get(pk=counter.pk).name == "still fine"


def test_clients_that_need_redis_py_own_path_get_it(direct, redis):
    single = redis_py.Redis(connection_pool=redis.connection_pool, single_connection_client=True)

    class Wrapped(redis_py.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            return super().execute_command(*args, **options)

    try:
        assert store_module._is_plain_client(redis)
        assert not store_module._is_plain_client(single)
        assert not store_module._is_plain_client(Wrapped(connection_pool=redis.connection_pool))
        assert not store_module._is_plain_client(object())
    finally:
        single.close()
