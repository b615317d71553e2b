"""
A django-redis client class for Redis Cluster (``redis.cluster.RedisCluster``).

Use it as ``OPTIONS["CLIENT_CLASS"]`` of a ``django_redis.cache.RedisCache`` whose
``LOCATION`` names one or more nodes of the cluster (a list, or a comma-separated
string, of ``redis://host:port`` URLs; any one reachable node is enough to
discover the others)::

    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"],
            "OPTIONS": {
                "CLIENT_CLASS": "cachepatterns_app.cluster.ClusterClient",
                "SOCKET_TIMEOUT": 1.0,
                "SOCKET_CONNECT_TIMEOUT": 1.0,
            },
        }
    }

Unlike :class:`django_redis.client.DefaultClient`, every URL of ``LOCATION`` is a
startup node of one cluster, not a primary/replica pair: writes and reads go to
the node that owns the key's slot. ``RedisCluster`` keeps one connection pool per
node, so the client (not a pool) is shared per process and per configuration.

The Django cache API's multi-key methods are split by slot or run on every
primary: ``get_many`` (``MGET`` per slot), ``set_many`` (a non-transactional
pipeline routed per key), ``delete_many`` (``DEL`` per slot),
``keys``/``iter_keys``/``delete_pattern`` (``SCAN`` on every primary, never
``KEYS``), ``clear`` (``FLUSHDB`` on every primary). Set and sorted-set commands over several keys
(``sinter``, ``smove``, …) work only on keys that share a hash tag.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_redis.client import DefaultClient
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["ClusterClient", "ClusterUnreachable", "cluster_kwargs", "no_retry", "startup_nodes"]

_ERRORS = (RedisConnectionError, RedisTimeoutError, ResponseError, RedisClusterException, OSError)

# One RedisCluster per configuration and process: Django builds a new cache client
# per thread, and each RedisCluster discovers the topology (CLUSTER SLOTS) and opens
# its own per-node pools. redis-py's pools reset themselves after a fork.
_clusters: dict[tuple[Any, ...], RedisCluster] = {}
_clusters_lock = threading.Lock()


def startup_nodes(location: str | Iterable[str]) -> tuple[list[ClusterNode], dict[str, Any]]:
    """
    Return the startup nodes named by ``location`` and the connection options its
    URLs carry (``rediss://`` → TLS, ``user:password@``).
    """
    urls = location.split(",") if isinstance(location, str) else list(location)
    nodes: list[ClusterNode] = []
    options: dict[str, Any] = {}
    for raw in urls:
        url = urlparse(raw.strip())
        if url.scheme not in {"redis", "rediss"} or not url.hostname:
            raise ImproperlyConfigured(
                f"Cluster LOCATION entry {raw!r} is not a redis://host:port URL; "
                "name each node as redis://host:port (rediss:// for TLS)."
            )
        db = url.path.strip("/")
        if db not in {"", "0"}:
            raise ImproperlyConfigured(
                f"Cluster LOCATION entry {raw!r} names database {db}; Redis Cluster has only "
                "database 0. Drop the /db part of the URL (isolate with KEY_PREFIX instead)."
            )
        nodes.append(ClusterNode(url.hostname, url.port or 6379))  # type: ignore[no-untyped-call]
        if url.scheme == "rediss":
            options["ssl"] = True
        if url.username:
            options["username"] = unquote(url.username)
        if url.password:
            options["password"] = unquote(url.password)
    if not nodes:
        raise ImproperlyConfigured("Cluster LOCATION names no node; give at least one redis://host:port URL.")
    return nodes, options


def cluster_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Return ``RedisCluster`` keyword arguments for django-redis ``OPTIONS``."""
    kwargs: dict[str, Any] = {}
    for option, name in (
        ("SOCKET_TIMEOUT", "socket_timeout"),
        ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout"),
    ):
        value = options.get(option)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ImproperlyConfigured(f"OPTIONS[{option!r}] must be a number of seconds, not {value!r}.")
            kwargs[name] = value
    for option, name in (("USERNAME", "username"), ("PASSWORD", "password")):
        if options.get(option):
            kwargs[name] = options[option]
    if options.get("PARSER_CLASS"):
        kwargs["parser_class"] = import_string(options["PARSER_CLASS"])
    # Per-node pool settings (max_connections, ssl_*, health_check_interval…) and
    # RedisCluster's own (require_full_coverage, read_from_replicas…).
    kwargs.update(options.get("CONNECTION_POOL_KWARGS", {}))
    kwargs.update(options.get("REDIS_CLIENT_KWARGS", {}))
    return kwargs


def no_retry() -> Retry:
    """
    Return the default ``retry`` of the cluster client: none.

    RedisCluster's own default retries a timed-out command three times with backoff,
    so one call to a hung node took 11 s with a 1 s socket timeout; a cache must fail
    within its socket timeout instead (the app then answers from the database and its
    circuit breaker opens). RedisCluster still refreshes its topology on the error, so
    the next call after a failover finds the new primary. MOVED/ASK redirections are
    followed regardless. Pass ``REDIS_CLIENT_KWARGS={"retry": Retry(...)}`` to retry.
    """
    return Retry(NoBackoff(), 0)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class ClusterUnreachable(ConnectionInterrupted, RedisConnectionError):  # type: ignore[misc]
    """
    No startup node answered while the cluster client was being built.

    Both django-redis's ``ConnectionInterrupted`` (so the cache API and its
    ``IGNORE_EXCEPTIONS`` mode treat it as an outage) and redis-py's
    ``ConnectionError`` (so the app's circuit breaker does).
    """


class ClusterClient(DefaultClient):  # type: ignore[misc]
    """A django-redis client whose connection is one ``RedisCluster``."""

    def __init__(self, server: Any, params: dict[str, Any], backend: Any) -> None:
        super().__init__(server, params, backend)
        self._nodes, url_options = startup_nodes(self._server)
        self._cluster_kwargs = {**url_options, **cluster_kwargs(self._options)}
        self._cluster_key = (
            tuple((n.host, n.port) for n in self._nodes),
            _freeze(self._cluster_kwargs),
        )
        # One cluster, however many startup nodes: index 0 is the only client.
        self._clients = [None]

    # -- connection -----------------------------------------------------------

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        """Return 0: the cluster client routes every command to its slot's node."""
        return 0

    def connect(self, index: int = 0) -> Any:
        """Return the process's ``RedisCluster`` for this configuration (created once)."""
        cluster = _clusters.get(self._cluster_key)
        if cluster is None:
            with _clusters_lock:
                cluster = _clusters.get(self._cluster_key)
                if cluster is None:
                    try:
                        cluster = RedisCluster(
                            startup_nodes=list(self._nodes),
                            **{"retry": no_retry(), **self._cluster_kwargs},
                        )
                    except _ERRORS as e:
                        raise ClusterUnreachable(None) from e
                    _clusters[self._cluster_key] = cluster
        return cluster

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        """Close the connections of every node's pool."""
        if client is None:
            client = self._clients[0]
        if client is not None:
            client.disconnect_connection_pools()

    # -- multi-key commands, split by slot or run on every primary ------------

    def get_many(
        self, keys: Collection[str], version: int | None = None, client: Any = None
    ) -> dict[Any, Any]:
        """Return the cached values of ``keys`` (one ``MGET`` per slot)."""
        if client is None:
            client = self.get_client(write=False)
        if not keys:
            return {}
        map_keys = {self.make_key(k, version=version): k for k in keys}
        try:
            results = client.mget_nonatomic(list(map_keys))
        except _ERRORS as e:
            raise ConnectionInterrupted(connection=client) from e
        return {
            map_keys[key]: self.decode(value)
            for key, value in zip(map_keys, results, strict=True)
            if value is not None
        }

    def set_many(
        self,
        data: dict[str, Any],
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
        client: Any = None,
    ) -> None:
        """Set every key of ``data`` (a pipeline routed per key, not a transaction)."""
        if client is None:
            client = self.get_client(write=True)
        try:
            pipeline = client.pipeline(transaction=False)
            for key, value in data.items():
                self.set(key, value, timeout, version=version, client=pipeline)
            pipeline.execute()
        except _ERRORS as e:
            raise ConnectionInterrupted(connection=client) from e

    def delete_many(self, keys: Iterable[str], version: int | None = None, client: Any = None) -> int:
        """Delete ``keys`` (one ``DEL`` per slot) and return how many existed."""
        if client is None:
            client = self.get_client(write=True)
        names = [self.make_key(k, version=version) for k in keys]
        if not names:
            return 0
        try:
            return int(client.delete(*names))
        except _ERRORS as e:
            raise ConnectionInterrupted(connection=client) from e

    def delete_pattern(
        self,
        pattern: str,
        version: int | None = None,
        prefix: str | None = None,
        client: Any = None,
        itersize: int | None = None,
    ) -> int:
        """Delete the keys matching ``pattern`` on every primary and return how many."""
        if client is None:
            client = self.get_client(write=True)
        match = self.make_pattern(pattern, version=version, prefix=prefix)
        try:
            names = list(client.scan_iter(match=match, count=itersize))
            for start in range(0, len(names), 500):
                client.delete(*names[start : start + 500])
        except _ERRORS as e:
            raise ConnectionInterrupted(connection=client) from e
        return len(names)

    def iter_keys(
        self,
        search: str,
        itersize: int | None = None,
        client: Any = None,
        version: int | None = None,
    ) -> Iterator[str]:
        """Yield the keys matching ``search`` on every primary (``SCAN``)."""
        if client is None:
            client = self.get_client(write=False)
        match = self.make_pattern(search, version=version)
        for item in client.scan_iter(match=match, count=itersize):
            yield self.reverse_key(item.decode() if isinstance(item, bytes) else item)

    def keys(self, search: str, version: int | None = None, client: Any = None) -> list[Any]:
        """Return the keys matching ``search`` on every primary (``SCAN``, not ``KEYS``)."""
        return list(self.iter_keys(search, version=version, client=client))

    def clear(self, client: Any = None) -> None:
        """Flush every primary (``FLUSHDB`` on each)."""
        if client is None:
            client = self.get_client(write=True)
        try:
            client.flushdb(target_nodes=RedisCluster.PRIMARIES)
        except _ERRORS as e:
            raise ConnectionInterrupted(connection=client) from e

    def do_close_clients(self) -> None:
        """Forget the client without closing the shared per-node pools (other threads use them)."""
        self._clients = [None]
