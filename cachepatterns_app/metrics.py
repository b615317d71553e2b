"""
The read side of the statistics: one report of everything the admin page shows.

:func:`collect` (``cachepatterns_app.stats.report``) reads what every process
shipped (``stats``), the write-behind queue (``patterns.write_behind.operations``),
the Redis server's own facts (``serverinfo``) and the invalidations recorded in the
database, and turns them into one JSON-able dict: counters per label (a model, a
family, a decorated function) and per pattern, duration distributions, the last
hour's history and the health checks. The HTML page, ``?format=json``,
``?format=prometheus`` and ``cachepatterns_stats`` all render this one dict.

Its cost does not grow with the number of keys in Redis: one ``INFO`` (plus two
``CONFIG GET``), one write of the sampled gauges and one pipeline of ``HGETALL``\\ s
of the app's own statistics hashes, whatever Redis holds. Never ``KEYS``, never
``SCAN``.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections import Counter
from typing import Any

from django.db import DatabaseError

from cachepatterns_app import serverinfo, stats
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CachePatternsError
from cachepatterns_app.patterns.write_behind import operations as write_behind

__all__ = ["PATTERNS", "classify", "collect", "quantile"]

logger = logging.getLogger(__name__)

PATTERNS = ("cache-aside", "write-through", "write-behind", "refresh-ahead", "other")

#: How many dead letters the report lists (their total is in the status).
DEAD_LETTERS_SHOWN = 50

REFRESH_EVENTS = ("refresh_scheduled", "refresh_done", "refresh_failed", "refresh_skipped", "stale_served")
WRITE_BEHIND_EVENTS = (
    "wb_queued",
    "wb_flushed",
    "wb_retried",
    "wb_failed",
    "wb_dead_lettered",
    "wb_sync_fallback",
    "wb_refused",
)


def hit_rate(events: dict[str, int]) -> float | None:
    """Return hits / (hits + misses), None before the first read."""
    reads = events.get("hit", 0) + events.get("miss", 0)
    return events.get("hit", 0) / reads if reads else None


def _known_labels() -> dict[str, tuple[str, str]]:
    """Return ``{label: (kind, pattern)}`` for the models and functions this process declared."""
    from cachepatterns_app import catalog, registry

    out: dict[str, tuple[str, str]] = {}
    for entry in catalog.declared():
        out[entry.key] = ("function", "cache-aside")
        if entry.family:
            out[entry.family] = ("family", "cache-aside")
    for cache in registry.row_caches().values():
        pattern = getattr(cache, "pattern", None)
        if pattern is None:
            name = type(cache).__name__
            pattern = (
                "write-through"
                if "WriteThrough" in name
                else "write-behind"
                if "WriteBehind" in name
                else "cache-aside"
            )
        out[cache.label] = ("model", str(pattern))
    return out


def classify(label: str, events: dict[str, int], known: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """Return the ``(kind, pattern)`` of ``label``: what it names, which pattern caches it."""
    kind, pattern = known.get(label, ("other", "other"))
    # What was counted says more than the declaration (refresh-ahead on a
    # cache-aside function, write-behind writes on a model).
    if any(events.get(e) for e in WRITE_BEHIND_EVENTS):
        pattern = "write-behind"
    elif any(events.get(e) for e in REFRESH_EVENTS):
        pattern = "refresh-ahead"
    elif pattern == "other" and (events.get("put") or events.get("stale_refused")):
        pattern = "write-through"
    if kind == "other" and "." in label and ":" not in label and "{" not in label:
        kind = "model"  # a model label (app_label.model) this process did not import
    elif kind == "other" and "{" in label:
        kind = "function"
    return kind, pattern


def quantile(q: float, buckets: list[int]) -> float | None:
    """
    Estimate the ``q`` quantile from per-bucket counts (linear within a bucket, as
    Prometheus's ``histogram_quantile``); None without observations.
    """
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            upper = stats.BUCKETS[i]
            lower = stats.BUCKETS[i - 1] if i else 0.0
            if math.isinf(upper):
                return lower  # beyond the last finite bound: all that can be said
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return stats.BUCKETS[-2]


def _durations(raw: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (label, name), cell in sorted(raw.items()):
        buckets: list[int] = cell["buckets"]
        count = sum(buckets)
        cumulative, running = [], 0
        for bound, n in zip(stats.BUCKETS, buckets, strict=True):
            running += n
            cumulative.append(["+Inf" if math.isinf(bound) else bound, running])
        out.append(
            {
                "label": label,
                "name": name,
                "count": count,
                "sum": cell["sum"],
                "mean": cell["sum"] / count if count else None,
                "p50": quantile(0.5, buckets),
                "p90": quantile(0.9, buckets),
                "p99": quantile(0.99, buckets),
                "buckets": cumulative,
            }
        )
    return out


def _history(minutes: list[int], fields: list[dict[str, float]]) -> dict[str, Any]:
    hit_rates: list[float | None] = []
    reads: list[int] = []
    depth: list[float | None] = []
    for minute in fields:
        hits, misses = minute.get("e|hit", 0.0), minute.get("e|miss", 0.0)
        reads.append(int(hits + misses))
        hit_rates.append(hits / (hits + misses) if hits + misses else None)
        samples = [v for k, v in minute.items() if k.startswith("g|") and k.endswith("|wb_pending")]
        depth.append(sum(samples) if samples else None)
    return {
        "minutes": [m * 60 for m in minutes],
        "hit_rate": hit_rates,
        "reads": reads,
        "queue_depth": depth,
    }


def _pending_invalidations() -> dict[str, Any]:
    from cachepatterns_app.invalidation import pending_retries
    from cachepatterns_app.pending import summary

    out: dict[str, Any] = {
        "in_process": pending_retries(),
        "recorded": None,
        "oldest_age": None,
        "error": None,
    }
    try:
        out["recorded"], oldest = summary()
    except DatabaseError as e:
        out["error"] = f"{e} (run `manage.py migrate`)"
        return out
    if oldest is not None:
        out["oldest_age"] = (datetime.datetime.now(datetime.UTC) - oldest).total_seconds()
    return out


def _write_behind() -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": False, "models": [], "dead_letters": [], "error": None}
    try:
        status = write_behind.status()
        out["enabled"] = bool(status.get("enabled"))
        out["models"] = list(status.get("models") or [])
        out["dead_letters"] = list(write_behind.dead_letters(DEAD_LETTERS_SHOWN))
    except CachePatternsError as e:
        out["error"] = str(e)
    ages = [m["oldest_pending_age"] for m in out["models"] if m.get("oldest_pending_age") is not None]
    out["pending"] = sum(int(m.get("pending") or 0) for m in out["models"])
    out["oldest_pending_age"] = max(ages) if ages else None
    out["dead_letter_count"] = sum(int(m.get("dead_letters") or 0) for m in out["models"])
    out["age_limit"] = pending_age_limit()
    return out


def pending_age_limit() -> float:
    """Return the age past which the oldest pending write is flagged: ``WRITE_BEHIND["WARN_AFTER"]``."""
    # The same threshold as the flush's WARNING log, so the page and the log agree.
    return float(get_settings().WRITE_BEHIND["WARN_AFTER"])


def collect() -> dict[str, Any]:
    """Return the report (see the module docstring); never raises for Redis being down."""
    from cachepatterns_app import health
    from cachepatterns_app.store import get_store

    store = get_store()
    server = serverinfo.facts(store)
    wb = _write_behind()
    # Sample the gauges now, so the charts have a point for every minute someone
    # looked (or a scraper scraped); write-behind's flush sets them as well.
    for model in wb["models"]:
        stats.gauge("wb_pending", str(model.get("label")), float(model.get("pending") or 0))
    if server.get("evicted_keys") is not None:
        stats.gauge("redis_evicted_keys", "redis", float(server["evicted_keys"]))
    counts: dict[str, dict[str, int]] = {}
    spans: dict[tuple[str, str], dict[str, Any]] = {}
    levels: dict[tuple[str, str], dict[str, float]] = {}
    minutes, history_reads = stats.history_commands()
    minute_fields: list[dict[str, float]] = [{} for _ in minutes]
    error = None
    try:
        stats.flush()
        replies = store.pipeline(
            [
                ("HGETALL", stats._hash_key()),
                ("HGETALL", stats._key("d")),
                ("HGETALL", stats._key("g")),
                *history_reads,
            ]
        )
        counts = stats.parse_counts(replies[0] or {})
        spans = stats.parse_durations(replies[1] or {})
        levels = stats.parse_gauges(replies[2] or {})
        minute_fields = [stats.parse_minute(r or {}) for r in replies[3:]]
    except CachePatternsError as e:
        error = str(e)
    known = _known_labels()
    labels: dict[str, dict[str, Any]] = {}
    patterns: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for label in sorted(counts):
        events = counts[label]
        kind, pattern = classify(label, events, known)
        labels[label] = {
            "kind": kind,
            "pattern": pattern,
            "events": dict(sorted(events.items())),
            "reads": events.get("hit", 0) + events.get("miss", 0),
            "hit_rate": hit_rate(events),
        }
        patterns.setdefault(pattern, Counter()).update(events)
        totals.update(events)
    history = _history(minutes, minute_fields)
    report: dict[str, Any] = {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "stats_enabled": bool(get_settings().STATS),
        "error": error,
        "redis": server,
        "breaker": {"alias": store.alias, "state": store.breaker.state},
        "totals": {"events": dict(sorted(totals.items())), "hit_rate": hit_rate(totals)},
        "patterns": {
            p: {"events": dict(sorted(c.items())), "hit_rate": hit_rate(c)}
            for p, c in sorted(patterns.items(), key=lambda kv: PATTERNS.index(kv[0]))
        },
        "labels": labels,
        "durations": _durations(spans),
        "gauges": [
            {"label": label, "name": name, "value": cell["value"], "at": cell["at"]}
            for (label, name), cell in sorted(levels.items())
        ],
        "write_behind": {**wb, "events": {e: totals.get(e, 0) for e in WRITE_BEHIND_EVENTS}},
        "refresh_ahead": {
            "events": {e: totals.get(e, 0) for e in REFRESH_EVENTS},
            "labels": {
                label: {e: row["events"].get(e, 0) for e in REFRESH_EVENTS}
                for label, row in labels.items()
                if any(row["events"].get(e) for e in REFRESH_EVENTS)
            },
        },
        "pending_invalidations": _pending_invalidations(),
        "history": history,
        "events": stats.EVENTS,
    }
    report["health"] = health.check(report, evictions=_evictions(minute_fields, server))
    return report


def _evictions(minutes: list[dict[str, float]], server: dict[str, Any]) -> dict[str, Any] | None:
    """Return the keys Redis evicted since the oldest sample of the last hour, if there is one."""
    current = server.get("evicted_keys")
    field = "f|redis|redis_evicted_keys"  # the first sample of each minute
    samples = [(i, m[field]) for i, m in enumerate(minutes) if field in m]
    if current is None or not samples:
        return None
    index, oldest = samples[0]
    if current < oldest:
        return None  # the server restarted since: its counter started again
    return {"evicted": int(current - oldest), "minutes": len(minutes) - index}
