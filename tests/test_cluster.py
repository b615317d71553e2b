"""
The four patterns on a real 3-master Redis Cluster, through ``ClusterClient``.

The module starts its own cluster (``tests/cluster.py``: three ``redis-server
--cluster-enabled yes`` on free loopback ports, ``redis-cli --cluster create``) or,
under ``python -m tests.cluster run``, uses the one ``CP_REDIS_CLUSTER`` names; it
points ``CACHES`` at it and starts a real Celery worker whose cache is the same
cluster (the broker stays on the suite's Redis). Every scenario is end to end:
real commits, real fills, a real worker flushing and refreshing; placement is
proven by asking the cluster which slot and node holds each key.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, models, transaction
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import cache_aside, flush_write_behind, stats
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import meta_key, model_label, write_behind_keys
from cachepatterns_app.store import get_store
from tests import cluster as harness
from tests.conftest import Worker, start_worker, stop_worker
from tests.ra_support import calls, keys_of, wait_filled
from tests.refreshapp.refreshers import wide
from tests.settings import REDIS_CLUSTER, cluster_cache
from tests.support import PATIENCE, family_keys, wait_until
from tests.support import keys_of as row_keys_of
from tests.testapp.models import Author, Counter, Post, Profile

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not harness.available(), reason="redis-server / redis-cli not on PATH: no local cluster"
    ),
]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[harness.LocalCluster | None]:
    """The cluster this module started (None when the run provides one: CP_REDIS_CLUSTER)."""
    if REDIS_CLUSTER:
        yield None
        return
    with harness.LocalCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_location(local_cluster: harness.LocalCluster | None) -> str:
    """The node URLs of the cluster under test."""
    return local_cluster.location if local_cluster is not None else REDIS_CLUSTER


@pytest.fixture(autouse=True)
def _on_the_cluster(settings: Any, cluster_location: str) -> None:
    settings.CACHES = {"default": cluster_cache(cluster_location)}


@pytest.fixture
def redis(_on_the_cluster: None) -> Any:
    """The cluster's RedisCluster client (overrides the suite's, so its cleanup runs here)."""
    return get_store("default").client


@pytest.fixture(scope="module")
def cluster_worker(cluster_location: str, django_db_setup: Any, django_db_blocker: Any) -> Iterator[Worker]:
    """A real Celery worker whose cache is the cluster."""
    from tests.celery_app import app

    previous = app.conf.task_default_queue
    worker = start_worker(f"cp-cluster-{os.getpid()}", extra_env={"CP_REDIS_CLUSTER": cluster_location})
    yield worker
    stop_worker(worker)
    app.conf.task_default_queue = previous


def queries(fn: Any) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return len(ctx.captured_queries), value


def node_of(redis: Any, key: str) -> str:
    return str(redis.get_node_from_key(key).name)


def on_its_node(redis: Any, key: str) -> bool:
    """Return whether ``key`` exists, asking only the node that owns its slot."""
    return bool(redis.get_node_from_key(key).redis_connection.exists(key))


@cache_aside(
    key="cl:author:{author_id}:posts:page:{page}",
    ttl=300,
    family="cl:author:{author_id}:posts",
    depends_on={Post: "author_id"},
)
def author_posts(author_id: int, page: int = 1) -> list[int]:
    start = (page - 1) * 3
    return list(
        Post.objects.filter(author_id=author_id)
        .order_by("id")
        .values_list("id", flat=True)[start : start + 3]
    )


# -- the cluster and where keys land -------------------------------------------------------------


@pytest.mark.django_db
def test_the_store_talks_to_a_three_primary_cluster(redis):
    store = get_store()
    assert store.is_cluster
    assert len(redis.get_primaries()) == 3
    for node in redis.get_primaries():
        assert b"cluster_state:ok" in node.redis_connection.execute_command("CLUSTER", "INFO")


@pytest.mark.django_db
def test_the_keys_of_one_row_family_and_queue_share_one_slot_and_rows_spread_over_every_node(redis):
    db = database_identity("default")
    row = row_keys_of(Author, 42)
    assert len({redis.keyslot(k) for k in (row.value, row.lease, row.version, meta_key(row.value))}) == 1

    family = family_keys("cl:author:7:posts")
    value, lease = family.member(3, "page=1")
    assert (
        len({redis.keyslot(k) for k in (family.generation, value, lease, family.member_meta(3, "page=1"))})
        == 1
    )

    wb = write_behind_keys(model_label(Counter), db)
    pk = uuid.uuid4()
    state = wb.row(str(pk))
    queue_keys = (wb.stream, wb.seq, wb.dead, wb.trigger, wb.errors, state.value, state.lease)
    assert len({redis.keyslot(k) for k in queue_keys}) == 1

    # Different rows are different tags: 100 rows cover all three primaries.
    nodes = {node_of(redis, row_keys_of(Author, pk).value) for pk in range(1, 101)}
    assert len(nodes) == 3


# -- cache-aside ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cache_aside_miss_fill_hit_and_invalidation_after_commit(redis):
    authors = [Author.objects.create(name=f"a{i}", email=f"a{i}@example.org") for i in range(12)]
    ada = authors[0]
    assert queries(lambda: Author.objects.get(pk=ada.pk))[0] == 1
    key = row_keys_of(Author, ada.pk).value
    assert wait_until(lambda: on_its_node(redis, key)), "the fill never landed on the key's node"
    n, got = queries(lambda: Author.objects.get(pk=ada.pk))
    assert (n, got.name) == (0, "a0")

    with transaction.atomic():
        Author.objects.filter(pk=ada.pk).update(name="renamed")
        assert on_its_node(redis, key), "invalidated before the commit"
    assert not on_its_node(redis, key)
    n, got = queries(lambda: Author.objects.get(pk=ada.pk))
    assert (n, got.name) == (1, "renamed")

    # get_many: one query for the misses, then hits from every node (MGET per slot).
    pks = [a.pk for a in authors]
    n, first = queries(lambda: Author.objects.get_many(pks))
    assert n == 1
    assert set(first) == set(pks)
    assert len({node_of(redis, row_keys_of(Author, pk).value) for pk in pks}) > 1
    assert wait_until(lambda: all(on_its_node(redis, row_keys_of(Author, pk).value) for pk in pks))
    n, again = queries(lambda: Author.objects.get_many(pks))
    assert n == 0
    assert {pk: a.name for pk, a in again.items()} == {pk: a.name for pk, a in first.items()}


@pytest.mark.django_db(transaction=True)
def test_a_family_is_invalidated_by_one_bump_and_other_families_stay_cached(redis):
    ann = Author.objects.create(name="ann", email="ann@example.org")
    bob = Author.objects.create(name="bob", email="bob@example.org")
    Post.objects.create(author=ann, title="one")
    Post.objects.create(author=bob, title="two")
    for author in (ann, bob):
        for page in (1, 2):
            author_posts(author.pk, page)
    for author in (ann, bob):
        for page in (1, 2):
            assert wait_until(lambda a=author, p=page: queries(lambda: author_posts(a.pk, p))[0] == 0)

    generation = family_keys(f"cl:author:{ann.pk}:posts").generation
    before = int(redis.get(generation) or 0)
    Post.objects.create(author=ann, title="three")
    assert int(redis.get(generation)) == before + 1
    n, page = queries(lambda: author_posts(ann.pk, 1))
    assert n == 1
    assert len(page) == 2
    assert queries(lambda: author_posts(ann.pk, 2))[0] == 1
    assert queries(lambda: author_posts(bob.pk, 1))[0] == 0


# -- write-through -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_write_through_puts_the_fresh_row_after_commit_and_never_an_older_one(redis):
    profile = Profile.objects.create(handle="cl", name="first")
    for name in ("second", "third"):
        profile.name = name
        profile.save()
    keys = row_keys_of(Profile, profile.pk)
    assert redis.keyslot(keys.value) == redis.keyslot(keys.version)
    n, got = queries(lambda: Profile.objects.get(pk=profile.pk))
    assert (n, got.name) == (0, "third")
    stored = int(redis.get(keys.version))
    assert stored == models.QuerySet(Profile).get(pk=profile.pk).version

    # A put carrying an older version loses to what is cached (the Lua check-and-set).
    with transaction.atomic():
        Profile.objects.filter(pk=profile.pk).update(name="fourth")
    n, got = queries(lambda: Profile.objects.get(pk=profile.pk))
    assert got.name == "fourth"
    assert int(redis.get(keys.version)) > stored


# -- write-behind, flushed by a real worker ------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_write_behind_saves_are_queued_in_the_cluster_and_flushed_by_a_real_worker(redis, cluster_worker):
    from cachepatterns_app.tasks import flush_write_behind as flush_task

    counters = [Counter(name=f"c{i}", views=i) for i in range(20)]
    for counter in counters:
        assert queries(counter.save)[0] == 0
    for counter in counters[:5]:
        Counter.objects.incr(counter.pk, "views", 10)
    wb = write_behind_keys(model_label(Counter), database_identity("default"))
    assert int(redis.xlen(wb.stream)) >= 20
    got = Counter.objects.get(pk=counters[0].pk)
    assert got.views == 10  # read-your-writes from the cluster

    written = flush_task.apply_async(queue=cluster_worker.queue).get(timeout=PATIENCE * 4)
    assert written >= 20
    in_db = {c.pk: c.views for c in models.QuerySet(Counter).filter(pk__in=[c.pk for c in counters])}
    assert in_db == {c.pk: c.views + (10 if i < 5 else 0) for i, c in enumerate(counters)}
    pending = redis.xpending(wb.stream, wb.GROUP)
    assert pending["pending"] == 0
    # Nothing left for a second flush: idempotent.
    assert flush_write_behind(Counter) == 0


# -- refresh-ahead, refreshed by a real worker ---------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_refresh_ahead_refreshes_in_the_worker_before_expiry(redis, cluster_worker):
    keys = keys_of(wide, item="cl")
    assert wide(item="cl")["n"] == 1
    wait_filled(redis, keys)
    assert redis.keyslot(keys.value) == redis.keyslot(keys.meta) == redis.keyslot(keys.lease)
    assert redis.pexpire(keys.value, 10_000)  # inside the 12 s window of its 60 s TTL
    assert wide(item="cl")["n"] == 1  # the cached value, a refresh scheduled
    assert wait_until(lambda: calls(redis, "wide") >= 2, timeout=PATIENCE * 4), cluster_worker.output()[
        -3000:
    ]
    assert wait_until(lambda: wide(item="cl")["n"] == 2, timeout=PATIENCE * 4)
    assert redis.pttl(keys.value) > 10_000  # refreshed with a full TTL
    assert calls(redis, "wide") == 2


# -- the Django cache API and the app's observability ---------------------------------------------


@pytest.mark.django_db
def test_the_django_cache_api_splits_multi_key_calls_by_slot(redis):
    from django.core.cache import cache

    data = {f"cl-api-{i}": i for i in range(30)}
    cache.set_many(data)
    assert cache.get_many([*data, "cl-api-missing"]) == data
    assert sorted(cache.keys("cl-api-1*")) == sorted(k for k in data if k.startswith("cl-api-1"))
    assert cache.delete_many(["cl-api-0", "cl-api-1", "cl-api-2"]) == 3
    assert cache.delete_pattern("cl-api-2*") == 10
    assert len(list(cache.iter_keys("cl-api-*"))) == 30 - 3 - 10
    cache.delete_pattern("cl-api-*")


@pytest.mark.django_db
def test_stats_and_server_facts_work_on_a_cluster(redis):
    from cachepatterns_app import serverinfo

    stats.record("hit", "cl:stats", 3)
    stats.flush()
    assert stats.snapshot()["cl:stats"]["hit"] == 3
    facts = serverinfo.facts(get_store())
    assert facts["available"] is True
    assert facts.get("cluster_nodes") == 3


# -- the client's configuration ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_options_reach_every_node_and_a_database_other_than_0_is_refused(redis, cluster_location):
    from django.core.exceptions import ImproperlyConfigured

    from cachepatterns_app.cluster import cluster_kwargs, startup_nodes

    for node in redis.get_primaries():
        kwargs = node.redis_connection.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 1.0)
    nodes, options = startup_nodes("rediss://u:p%40ss@10.0.0.1:7000, redis://10.0.0.2")
    assert [(n.host, n.port) for n in nodes] == [("10.0.0.1", 7000), ("10.0.0.2", 6379)]
    assert options == {"ssl": True, "username": "u", "password": "p@ss"}
    assert cluster_kwargs({"CONNECTION_POOL_KWARGS": {"max_connections": 5}}) == {"max_connections": 5}
    with pytest.raises(ImproperlyConfigured, match="only database 0"):
        startup_nodes(["redis://127.0.0.1:7000/3"])
    with pytest.raises(ImproperlyConfigured, match="redis://host:port"):
        startup_nodes("127.0.0.1:7000")


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_cluster_degrades_reads_to_the_database(settings, counts):
    ada = Author.objects.create(name="ada", email="ada@example.org")
    nobody = harness._free_ports(1)[0]
    settings.CACHES = {"default": cluster_cache(f"redis://127.0.0.1:{nobody}")}
    n, got = queries(lambda: Author.objects.get(pk=ada.pk))
    assert (n, got.name) == (1, "ada")
    assert counts("testapp.author").get("degraded", 0) >= 1
    assert get_store().breaker.state == "open"  # the next read does not wait again


@pytest.mark.django_db
def test_a_plain_client_pointed_at_a_cluster_node_is_an_error_the_cluster_client_is_not(
    settings, cluster_location
):
    from cachepatterns_app.checks import check_redis_reachable

    assert check_redis_reachable() == []
    node = cluster_location.split(",")[0]
    plain = {
        "django-redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": node,
            "OPTIONS": {"SOCKET_TIMEOUT": 1.0, "SOCKET_CONNECT_TIMEOUT": 1.0},
        },
        "django": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": node,
            "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        },
    }
    for name, cache in plain.items():
        settings.CACHES = {"default": cache}
        messages = check_redis_reachable()
        assert [m.id for m in messages] == ["cachepatterns.E016"], name
        assert "ClusterClient" in (messages[0].hint or "")


@pytest.mark.django_db(transaction=True)
def test_an_invalidation_a_stopped_node_missed_is_sent_once_it_answers(redis, local_cluster):
    """
    Fault: the node owning a cached row is stopped (SIGSTOP) when the row's update
    commits. Expected: the commit succeeds, the invalidation is queued, and once the
    node answers again (SIGCONT) the recovery hook sends it through a cluster pipeline
    (EVAL/DEL routed by key); the next read misses and returns the new row.
    """
    import signal

    from cachepatterns_app import invalidation
    from tests.support import cachepatterns

    if local_cluster is None:
        pytest.skip("needs the nodes' processes: run without CP_REDIS_CLUSTER")
    ada = Author.objects.create(name="ada", email="ada@example.org")
    key = row_keys_of(Author, ada.pk).value
    with cachepatterns(CIRCUIT_BREAKER={"THRESHOLD": 1, "COOLDOWN": 0.2}):
        Author.objects.get(pk=ada.pk)
        assert wait_until(lambda: on_its_node(redis, key)), "the fill never landed"
        port = redis.get_node_from_key(key).port
        (process,) = [
            p
            for p, node_port in zip(local_cluster.processes, local_cluster.ports, strict=True)
            if node_port == port
        ]
        process.send_signal(signal.SIGSTOP)
        try:
            Author.objects.filter(pk=ada.pk).update(name="after")  # commits; Redis times out
            assert invalidation.pending_retries() == 1
        finally:
            process.send_signal(signal.SIGCONT)

        def sent() -> bool:
            invalidation.retry_failed()
            return invalidation.pending_retries() == 0

        assert wait_until(sent, timeout=PATIENCE * 2, interval=0.2)
        assert not on_its_node(redis, key)
        n, got = queries(lambda: Author.objects.get(pk=ada.pk))
        assert (n, got.name) == (1, "after")


@pytest.mark.django_db
def test_a_call_to_a_hung_node_fails_within_the_socket_timeout_not_after_retries(redis, local_cluster):
    """RedisCluster's default (3 retries with backoff) took 11 s here; the client's default: none."""
    import signal

    from redis.exceptions import TimeoutError as RedisTimeoutError

    if local_cluster is None:
        pytest.skip("needs the nodes' processes: run without CP_REDIS_CLUSTER")
    assert redis.retry.get_retries() == 0
    key = row_keys_of(Author, 1).value
    redis.set(key, b"x")
    port = redis.get_node_from_key(key).port
    (process,) = [
        p
        for p, node_port in zip(local_cluster.processes, local_cluster.ports, strict=True)
        if node_port == port
    ]
    sent = SocketSends()
    process.send_signal(signal.SIGSTOP)
    try:
        with sent, pytest.raises(RedisTimeoutError):
            redis.get(key)
    finally:
        process.send_signal(signal.SIGCONT)
    assert sent.gets == 1  # tried once: no retry
    assert wait_until(lambda: redis.get(key) == b"x")


class SocketSends:
    """Count the GETs redis-py writes to any socket while active."""

    def __init__(self) -> None:
        self.gets = 0

    def __enter__(self) -> SocketSends:
        import redis as redis_py

        self._original = original = redis_py.connection.AbstractConnection.send_command

        def counting(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if args and str(args[0]).upper() == "GET":
                self.gets += 1
            return original(conn, *args, **kwargs)

        redis_py.connection.AbstractConnection.send_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import redis as redis_py

        redis_py.connection.AbstractConnection.send_command = self._original  # type: ignore[method-assign]
