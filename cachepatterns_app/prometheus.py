"""
The report (``metrics``) in the Prometheus text exposition format (version 0.0.4),
so that a Prometheus server scrapes ``/admin/cachepatterns_app/stats/?format=prometheus``
directly, with no exporter.

Counters are ``cachepatterns_<event>_total{label, kind, pattern}``, summed over every
process; durations are histograms ``cachepatterns_<name>_seconds``; the rest are
gauges. The hit rate is left to PromQL (``rate(hits) / (rate(hits) + rate(misses))``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from cachepatterns_app import stats

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _name(text: str) -> str:
    return _NOT_NAME.sub("_", text)


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[str, dict[str, Any], float]]
    ) -> None:
        rows = list(samples)
        if not rows:
            return
        self.lines.append(f"# HELP {name} {_help(help_)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in rows:
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_number(value)}")


def render(report: dict[str, Any]) -> str:
    """Return ``report`` as Prometheus text exposition."""
    out = _Writer()
    redis = report["redis"]
    out.family(
        "cachepatterns_up",
        "gauge",
        "1 if Redis answered this scrape",
        [("", {}, float(bool(redis.get("available"))))],
    )
    events = sorted({e for row in report["labels"].values() for e in row["events"]})
    for event in events:
        out.family(
            f"cachepatterns_{_name(event)}_total",
            "counter",
            stats.EVENTS.get(event, f"{event} events"),
            [
                ("", {"label": label, "kind": row["kind"], "pattern": row["pattern"]}, row["events"][event])
                for label, row in report["labels"].items()
                if event in row["events"]
            ],
        )
    by_name: dict[str, list[dict[str, Any]]] = {}
    for d in report["durations"]:
        by_name.setdefault(d["name"], []).append(d)
    for name, rows in sorted(by_name.items()):
        samples: list[tuple[str, dict[str, Any], float]] = []
        for d in rows:
            for bound, cumulative in d["buckets"]:
                le = "+Inf" if bound == "+Inf" else _number(bound)
                samples.append(("_bucket", {"label": d["label"], "le": le}, cumulative))
            samples.append(("_sum", {"label": d["label"]}, d["sum"]))
            samples.append(("_count", {"label": d["label"]}, d["count"]))
        out.family(
            f"cachepatterns_{_name(name)}_seconds",
            "histogram",
            stats.DURATIONS.get(name, f"{name} duration"),
            samples,
        )
    wb = report["write_behind"]
    for field, help_ in (
        ("pending", "write-behind: writes queued and not yet in the database"),
        ("oldest_pending_age", "write-behind: age in seconds of the oldest pending write"),
        ("stream_length", "write-behind: entries in the model's stream"),
        ("dead_letters", "write-behind: dead-lettered writes"),
        ("consumers", "write-behind: consumers of the model's stream"),
    ):
        suffix = "_seconds" if field == "oldest_pending_age" else ""
        out.family(
            f"cachepatterns_write_behind_{field}{suffix}",
            "gauge",
            help_,
            [
                ("", {"model": m.get("label")}, float(m[field]))
                for m in wb["models"]
                if m.get(field) is not None
            ],
        )
    pending = report["pending_invalidations"]
    if pending.get("recorded") is not None:
        out.family(
            "cachepatterns_pending_invalidations",
            "gauge",
            "invalidations recorded in the database because Redis was unavailable",
            [("", {}, float(pending["recorded"]))],
        )
    out.family(
        "cachepatterns_breaker_open",
        "gauge",
        "1 if this process's circuit breaker in front of Redis is not closed",
        [("", {"alias": report["breaker"]["alias"]}, float(report["breaker"]["state"] != "closed"))],
    )
    _redis(out, redis)
    out.family(
        "cachepatterns_health_problems",
        "gauge",
        "findings of the health panel (1 per finding)",
        [("", {"check": f["id"], "level": f["level"]}, 1.0) for f in report["health"]],
    )
    return "\n".join(out.lines) + "\n"


def _redis(out: _Writer, redis: dict[str, Any]) -> None:
    if not redis.get("available"):
        return
    out.family(
        "cachepatterns_redis_info",
        "gauge",
        "Redis server facts as labels",
        [
            (
                "",
                {
                    "version": redis.get("version") or "",
                    "role": redis.get("role") or "",
                    "maxmemory_policy": redis.get("maxmemory_policy") or "unknown",
                    "persistence": redis.get("persistence") or "",
                },
                1.0,
            )
        ],
    )
    for field, kind, help_ in (
        ("connected_clients", "gauge", "clients connected to Redis"),
        ("used_memory", "gauge", "bytes of memory Redis uses"),
        ("used_memory_peak", "gauge", "peak bytes of memory Redis used"),
        ("maxmemory", "gauge", "Redis maxmemory in bytes (0: no limit)"),
        ("keyspace_hits", "counter", "lookups Redis found the key for"),
        ("keyspace_misses", "counter", "lookups Redis did not find the key for"),
        ("evicted_keys", "counter", "keys Redis evicted because of maxmemory"),
        ("expired_keys", "counter", "keys Redis expired"),
        ("keys", "gauge", "keys in every database of the Redis server"),
    ):
        value = redis.get(field)
        if value is None:
            continue
        name = f"cachepatterns_redis_{field}"
        if field.startswith("used_memory") or field == "maxmemory":
            name += "_bytes"
        if kind == "counter":
            name += "_total"
        out.family(name, kind, help_, [("", {}, float(value))])
