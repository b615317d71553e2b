"""
What the Redis server says about itself: version, role, clients, memory, eviction
policy, persistence, keyspace hits and misses, evicted and expired keys.

One round trip, whatever the number of keys: ``INFO`` (its default sections;
the keyspace section is one line per database, not per key) and two ``CONFIG GET``
in one pipeline. Managed Redis services often refuse ``CONFIG``: the eviction
policy then comes from ``INFO`` alone and the RDB schedule is reported unknown.
"""

from __future__ import annotations

import logging
from typing import Any

from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.store import Store

__all__ = ["EVICTS_ANY_KEY", "facts", "parse"]

logger = logging.getLogger(__name__)

#: Policies that may evict keys without a TTL (write-behind's dirty rows have none).
EVICTS_ANY_KEY = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random"})

_COPIED = (
    "redis_mode",
    "role",
    "connected_clients",
    "used_memory",
    "used_memory_human",
    "used_memory_peak",
    "used_memory_peak_human",
    "maxmemory",
    "maxmemory_human",
    "keyspace_hits",
    "keyspace_misses",
    "evicted_keys",
    "expired_keys",
    "uptime_in_seconds",
    "rdb_changes_since_last_save",
    "rdb_last_save_time",
)


def _config_value(reply: Any, name: str) -> str | None:
    if isinstance(reply, BaseException) or not isinstance(reply, dict):
        return None
    value = reply.get(name, reply.get(name.encode()))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def parse(
    info: dict[str, Any], policy_reply: Any = None, save_reply: Any = None, db: int = 0
) -> dict[str, Any]:
    """Return the facts from an ``INFO`` reply and the two ``CONFIG GET`` replies (or errors)."""
    out: dict[str, Any] = {name: info.get(name) for name in _COPIED}
    out["available"] = True
    out["error"] = None
    out["server"] = "valkey" if "valkey_version" in info else "redis"
    out["version"] = info.get("valkey_version") or info.get("redis_version")
    policy = info.get("maxmemory_policy") or _config_value(policy_reply, "maxmemory-policy")
    out["maxmemory_policy"] = str(policy) if policy else None
    out["config_refused"] = isinstance(policy_reply, BaseException) or isinstance(save_reply, BaseException)
    aof = info.get("aof_enabled")
    out["aof_enabled"] = None if aof is None else bool(int(aof))
    save = _config_value(save_reply, "save")
    out["rdb_schedule"] = save  # "" = no snapshots; None = unknown (CONFIG refused)
    parts = []
    if out["aof_enabled"]:
        parts.append("AOF")
    if save:
        parts.append("RDB")
    if parts:
        out["persistence"] = " + ".join(parts)
    elif save is None:
        out["persistence"] = "no AOF; RDB unknown (CONFIG refused)"
    else:
        out["persistence"] = "none"
    hits, misses = out["keyspace_hits"], out["keyspace_misses"]
    reads = (hits or 0) + (misses or 0)
    out["keyspace_hit_rate"] = (hits or 0) / reads if reads else None
    databases = {
        k: v for k, v in info.items() if k.startswith("db") and k[2:].isdigit() and isinstance(v, dict)
    }
    out["keys"] = sum(int(v.get("keys", 0)) for v in databases.values())
    out["db"] = db
    out["db_keys"] = int(databases.get(f"db{db}", {}).get("keys", 0))
    return out


def facts(store: Store) -> dict[str, Any]:
    """Return the server's facts, or ``{"available": False, "error": ...}`` if it cannot be asked."""
    try:
        client = store.client
        db = int(getattr(client, "connection_pool", None).connection_kwargs.get("db", 0) or 0)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a cluster client has no single pool: db 0
        db = 0
    try:
        if store.is_cluster:
            return _cluster_facts(store)
        info, policy, save = store.pipeline(
            [("INFO",), ("CONFIG", "GET", "maxmemory-policy"), ("CONFIG", "GET", "save")],
            raise_on_error=False,
        )
    except CacheUnavailable as e:
        return {"available": False, "error": str(e)}
    if isinstance(info, BaseException):
        return {"available": False, "error": f"INFO refused: {info}"}
    if isinstance(policy, BaseException):
        logger.info("CONFIG GET refused (%s); the eviction policy comes from INFO", policy)
    return parse(info, policy, save, db)


def _human_bytes(n: int) -> str:
    """Return ``n`` bytes the way INFO's ``*_human`` fields spell it (``1.23M``)."""
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.2f}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1024
    return f"{size:.2f}T"  # pragma: no cover - the loop returns


def _cluster_facts(store: Store) -> dict[str, Any]:
    """
    Return the facts of a cluster: INFO from every primary (one call each, in
    parallel by redis-py), the first node's server facts, counters summed over the
    nodes, and the worst persistence and eviction policy (a queue lives on one node).
    """

    def ask() -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for node in sorted(store.client.get_primaries(), key=lambda n: n.name):
            pipe = node.redis_connection.pipeline(transaction=False)
            pipe.execute_command("INFO")
            pipe.execute_command("CONFIG", "GET", "maxmemory-policy")
            pipe.execute_command("CONFIG", "GET", "save")
            out[node.name] = pipe.execute(raise_on_error=False)
        return out

    replies = store.guard(ask)
    if not replies:
        return {"available": False, "error": "the cluster has no primary"}
    for name, (info, _, _) in replies.items():
        if isinstance(info, BaseException):
            return {"available": False, "error": f"INFO refused by {name}: {info}"}
    nodes = [parse(info, policy, save) for info, policy, save in replies.values()]
    out = dict(nodes[0])
    for name in (
        "connected_clients",
        "used_memory",
        "keyspace_hits",
        "keyspace_misses",
        "evicted_keys",
        "expired_keys",
        "keys",
        "db_keys",
    ):
        out[name] = sum(int(n.get(name) or 0) for n in nodes)
    out["used_memory_human"] = _human_bytes(out["used_memory"])
    hits, misses = out["keyspace_hits"], out["keyspace_misses"]
    out["keyspace_hit_rate"] = hits / (hits + misses) if hits + misses else None
    if any(n["aof_enabled"] is False for n in nodes):
        out["aof_enabled"] = False
        out["persistence"] = next(n["persistence"] for n in nodes if n["aof_enabled"] is False)
    evicting = [n["maxmemory_policy"] for n in nodes if n["maxmemory_policy"] in EVICTS_ANY_KEY]
    if evicting:
        out["maxmemory_policy"] = evicting[0]
    out["cluster_nodes"] = len(nodes)
    out["nodes"] = list(replies)
    return out
