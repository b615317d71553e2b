"""
The health panel: what an operator must act on, read off a report (``metrics``).

Each finding is ``{"id", "level", "title", "detail"}``; ``level`` is ``"error"``
(data can be lost or the cache is not working) or ``"warning"`` (it will be, or
it costs). An empty list means nothing needs attention.
"""

from __future__ import annotations

from typing import Any

from cachepatterns_app.serverinfo import EVICTS_ANY_KEY

__all__ = ["check"]


def _finding(id_: str, level: str, title: str, detail: str) -> dict[str, str]:
    return {"id": id_, "level": level, "title": title, "detail": detail}


def check(report: dict[str, Any], *, evictions: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Return the findings for ``report`` (``evictions``: keys evicted since an earlier sample)."""
    out: list[dict[str, str]] = []
    redis = report["redis"]
    wb = report["write_behind"]
    uses_write_behind = bool(wb.get("enabled"))
    if not redis.get("available"):
        out.append(
            _finding(
                "redis_down",
                "error",
                "Redis is unavailable",
                f"{redis.get('error')}. Reads go to the database; write-behind saves fall back or fail.",
            )
        )
    if report["breaker"]["state"] != "closed":
        out.append(
            _finding(
                "breaker_open",
                "error",
                f"Circuit breaker {report['breaker']['state']}",
                f"This process stopped calling Redis for cache {report['breaker']['alias']!r} after "
                "connection failures; reads are served by the database until a probe succeeds.",
            )
        )
    policy = redis.get("maxmemory_policy")
    if uses_write_behind and policy in EVICTS_ANY_KEY:
        out.append(
            _finding(
                "eviction_policy",
                "error",
                f"maxmemory-policy {policy} can evict dirty rows",
                "Write-behind keeps rows not yet in the database without a TTL; an allkeys-* policy "
                "may evict them. Use noeviction or a volatile-* policy (CONFIG SET maxmemory-policy "
                "volatile-lru, and in redis.conf).",
            )
        )
    if uses_write_behind and redis.get("aof_enabled") is False:
        out.append(
            _finding(
                "aof_off",
                "error",
                "AOF is off while write-behind is used",
                "Queued writes live only in Redis: a restart loses what was acknowledged since the last "
                "snapshot. Turn on appendonly yes (appendfsync everysec).",
            )
        )
    if evictions and evictions["evicted"] > 0:
        out.append(
            _finding(
                "evictions",
                "warning",
                f"Redis evicted {evictions['evicted']} keys in the last {evictions['minutes']} min",
                "maxmemory is too small for what is cached: rows are dropped before their TTL and read "
                "again from the database. Raise maxmemory or lower TTLs.",
            )
        )
    maxmemory, used = redis.get("maxmemory") or 0, redis.get("used_memory") or 0
    if maxmemory and used / maxmemory >= 0.9:
        out.append(
            _finding(
                "memory",
                "warning",
                f"Redis uses {100 * used / maxmemory:.0f} % of maxmemory",
                f"{redis.get('used_memory_human')} of {redis.get('maxmemory_human')}: evictions (or, with "
                "noeviction, refused writes) are next.",
            )
        )
    oldest, limit = wb.get("oldest_pending_age"), wb.get("age_limit")
    if oldest is not None and limit is not None and oldest > limit:
        out.append(
            _finding(
                "write_behind_lag",
                "error",
                f"Oldest pending write is {oldest:.0f} s old",
                f"More than {limit:.0f} s (ten FLUSH_INTERVALs): the flush is not keeping up or no worker "
                "runs cachepatterns.flush_write_behind. Check the Celery workers and beat.",
            )
        )
    if wb.get("dead_letter_count"):
        out.append(
            _finding(
                "dead_letters",
                "warning",
                f"{wb['dead_letter_count']} dead-lettered write(s)",
                "Writes given up after MAX_RETRIES. Fix the cause, then replay them (or purge them).",
            )
        )
    if wb.get("error"):
        out.append(_finding("write_behind_error", "error", "Write-behind status unavailable", wb["error"]))
    pending = report["pending_invalidations"]
    if pending.get("error"):
        out.append(
            _finding("pending_table", "error", "Pending invalidations cannot be read", pending["error"])
        )
    elif pending.get("recorded"):
        age = pending.get("oldest_age")
        out.append(
            _finding(
                "pending_invalidations",
                "warning",
                f"{pending['recorded']} invalidation(s) recorded in the database",
                "They could not reach Redis"
                + (f" (the oldest {age:.0f} s ago)" if age is not None else "")
                + "; other processes may serve those rows stale until the "
                "cachepatterns.retry_invalidations task sends them. Is that task scheduled?",
            )
        )
    if pending.get("in_process"):
        out.append(
            _finding(
                "pending_in_process",
                "warning",
                f"{pending['in_process']} invalidation(s) queued in this process",
                "Sent before any other Redis call once Redis answers again.",
            )
        )
    return out
