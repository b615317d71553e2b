"""
Count what the cache does: hits, misses, fills, invalidations, failures, and how
long database loads and write-behind flushes take.

Counting must not cost a round trip on the hit path, so each process keeps its
counters in memory and ships the increments to Redis at most once a second,
piggy-backed on ``CLIENT REPLY SKIP`` (no reply is awaited). The admin page and
``cachepatterns_stats`` read what every process shipped, summed.

What is kept in Redis (one hash tag, ``{stats}``, so a cluster keeps it on one node):

- ``<prefix>:{stats}``: ``label|event`` → count (:func:`record`);
- ``<prefix>:{stats}:d``: ``label|name|<bucket>`` → count and ``label|name|sum_us`` →
  total microseconds of the durations :func:`observe` saw;
- ``<prefix>:{stats}:g``: ``label|name`` → the last value a process set with
  :func:`gauge` (write-behind queue depth), and ``label|name|at`` → when;
- ``<prefix>:{stats}:m:<minute>``: one hash per minute (Unix time // 60), expiring
  after :data:`HISTORY_TTL`: ``e|event`` → that minute's count over every label,
  ``g|label|name`` → a gauge's last value in that minute and ``f|label|name`` → its
  first (what a counter-like gauge, Redis's evicted keys, is compared against).
  Written by the shipments that already happen, so the last hour's charts cost
  nothing on the hit path.

A process can end before its next shipment: a ``manage.py`` command, a
``shell -c``, a script, a Celery pool process. So what is pending is also shipped
when the interpreter exits (``atexit``), when a Celery task ends and when a pool
process shuts down (``cachepatterns_app.celery.connect_signals``). None of these
adds anything to the hit path. A forked child starts with no counts of its own:
what its parent counted before the fork is the parent's to ship.

:func:`report` is the read API: everything the admin page shows, as one dict.

"""

from __future__ import annotations

import atexit
import bisect
import logging
import math
import os
import threading
import time
from collections import Counter
from typing import Any

from cachepatterns_app.conf import get_settings

__all__ = [
    "BUCKETS",
    "DURATIONS",
    "EVENTS",
    "GAUGES",
    "HISTORY_MINUTES",
    "durations",
    "flush",
    "gauge",
    "gauges",
    "history",
    "local_counts",
    "observe",
    "record",
    "report",
    "reset",
    "ship_at_exit",
    "snapshot",
]

logger = logging.getLogger(__name__)

#: The events counted, with what each means (shown on the admin page and as the
#: HELP of each Prometheus counter).
EVENTS: dict[str, str] = {
    "hit": "read served from Redis",
    "miss": "read not in Redis; loaded from the database",
    "fill": "value loaded on a miss and sent to Redis",
    "wait": "miss that waited for another caller's fill (single flight)",
    "stale_refused": "write-through put refused: a newer version (or a delete) was already stored",
    "bypass": "read served from the database without the cache",
    "invalidation": "key or family invalidated after a commit",
    "put": "fresh row stored after a commit (write-through)",
    "degraded": "read served from the database because Redis was unavailable",
    "error": "value that could not be encoded (not cached)",
    "invalidation_failed": "invalidation that could not reach Redis, queued for retry",
    "corrupt": "unreadable payload found in Redis, deleted",
    "too_large": "value larger than MAX_VALUE_BYTES, not cached",
    # refresh-ahead
    "refresh_scheduled": "refresh-ahead: background refresh scheduled (key near expiry)",
    "refresh_done": "refresh-ahead: background refresh stored a fresh value",
    "refresh_failed": "refresh-ahead: background refresh failed; the old value was kept",
    "refresh_skipped": "refresh-ahead: result not stored (key invalidated, rewritten or taken over)",
    "stale_served": "refresh-ahead: the current value served while its refresh runs",
    # write-behind
    "wb_queued": "write-behind: write queued in Redis, to be flushed to the database",
    "wb_flushed": "write-behind: queued write applied to the database",
    "wb_retried": "write-behind: flush of a write failed and will be retried",
    "wb_failed": "write-behind: flush attempt failed",
    "wb_dead_lettered": "write-behind: write given up after MAX_RETRIES, kept as a dead letter",
    "wb_sync_fallback": "write-behind: Redis unavailable, written to the database synchronously",
    "wb_refused": "write-behind: write refused because the queue is full (MAX_PENDING)",
}

#: The durations observed (:func:`observe`), in seconds.
DURATIONS: dict[str, str] = {
    "db_load": "time to load a missed value from the database",
    "wb_flush": "time to write one write-behind batch to the database",
    "refresh": "time to recompute a refresh-ahead value",
}

#: The gauges set (:func:`gauge`).
GAUGES: dict[str, str] = {
    "wb_pending": "write-behind: writes queued and not yet in the database",
}

#: Upper bounds in seconds of the duration buckets (Prometheus's ``le``), +Inf last.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf,
)  # fmt: skip

#: Minutes of history the charts show, and how long a minute's hash lives.
HISTORY_MINUTES = 60
HISTORY_TTL = 2 * HISTORY_MINUTES * 60

FLUSH_EVERY = 1.0

_lock = threading.Lock()
#: This process's counts since it started, by (label, event).
_local: dict[tuple[str, str], int] = {}
#: How much of each of those is in Redis already: a shipment sends the difference,
#: so the hit path updates one dict, not two.
_shipped: dict[tuple[str, str], int] = {}
#: (label, name) -> [count per bucket..., total microseconds]
_durations: dict[tuple[str, str], list[int]] = {}
#: (label, name) -> value set since the last shipment
_gauges: dict[tuple[str, str], float] = {}
_last_flush = time.monotonic()


def _hash_key() -> str:
    return f"{get_settings().key_prefix}:{{stats}}"


def _key(suffix: str) -> str:
    return f"{get_settings().key_prefix}:{{stats}}:{suffix}"


def _minute_key(minute: int) -> str:
    return _key(f"m:{minute}")


def record(event: str, label: str, n: int = 1) -> None:
    """Count ``n`` occurrences of ``event`` for ``label`` (a model or key template)."""
    # The hit path: a dict lookup for the switch (the settings object's __getattr__
    # costs a failed attribute lookup first), one dict update under the lock.
    if not get_settings().raw["STATS"]:
        return
    key = (label, event)
    global _last_flush
    with _lock:
        _local[key] = _local.get(key, 0) + n
        now = time.monotonic()
        due = now - _last_flush >= FLUSH_EVERY
        if due:
            _last_flush = now
    if due:
        flush(wait=False)


def observe(name: str, label: str, seconds: float) -> None:
    """
    Add one duration of ``seconds`` to the distribution ``name`` of ``label``
    (``db_load``, ``wb_flush``, ``refresh``: see :data:`DURATIONS`).
    """
    if not get_settings().raw["STATS"]:
        return
    seconds = max(0.0, seconds)
    bucket = bisect.bisect_left(BUCKETS, seconds)  # the first bound >= seconds: "le"
    global _last_flush
    with _lock:
        cell = _durations.get((label, name))
        if cell is None:
            cell = _durations[(label, name)] = [0] * (len(BUCKETS) + 1)
        cell[bucket] += 1
        cell[-1] += round(seconds * 1_000_000)
        due = time.monotonic() - _last_flush >= FLUSH_EVERY
        if due:
            _last_flush = time.monotonic()
    if due:
        flush(wait=False)


def gauge(name: str, label: str, value: float) -> None:
    """
    Set the gauge ``name`` of ``label`` (``wb_pending``: see :data:`GAUGES`); shipped
    with this process's next shipment, and kept in that minute's history.
    """
    if not get_settings().raw["STATS"]:
        return
    with _lock:
        _gauges[(label, name)] = value


def flush(*, wait: bool = True) -> None:
    """Send this process's pending increments to Redis."""
    from cachepatterns_app.exceptions import CacheUnavailable
    from cachepatterns_app.store import get_store

    with _lock:
        batch = _unshipped()
        _shipped.update({key: _shipped.get(key, 0) + n for key, n in batch.items()})
        timings = {k: list(v) for k, v in _durations.items()}
        levels = dict(_gauges)
        _durations.clear()
        _gauges.clear()
    if not (batch or timings or levels):
        return
    commands = _commands(batch, timings, levels)
    store = get_store()
    if wait:
        try:
            store.pipeline(commands)
        except CacheUnavailable as e:
            logger.info("Statistics not sent (%s); they are kept for the next try", e)
            _keep(batch, timings, levels)
    elif not store.send_no_reply(commands):
        _keep(batch, timings, levels)


def _unshipped() -> dict[tuple[str, str], int]:
    """Return what was counted and not shipped yet (call under the lock)."""
    return {key: n - _shipped.get(key, 0) for key, n in _local.items() if n != _shipped.get(key, 0)}


Batch = dict[tuple[str, str], int]
Timings = dict[tuple[str, str], list[int]]
Levels = dict[tuple[str, str], float]


def _commands(batch: Batch, timings: Timings, levels: Levels) -> list[tuple[Any, ...]]:
    now = time.time()
    minute = _minute_key(int(now // 60))
    counters, spans, current = _hash_key(), _key("d"), _key("g")
    commands: list[tuple[Any, ...]] = [
        ("HINCRBY", counters, f"{label}|{event}", n) for (label, event), n in batch.items()
    ]
    per_event: Counter[str] = Counter()
    for (_, event), n in batch.items():
        per_event[event] += n
    commands += [("HINCRBY", minute, f"e|{event}", n) for event, n in per_event.items()]
    for (label, name), cell in timings.items():
        commands += [("HINCRBY", spans, f"{label}|{name}|{i}", n) for i, n in enumerate(cell[:-1]) if n]
        commands.append(("HINCRBY", spans, f"{label}|{name}|sum_us", cell[-1]))
    for (label, name), value in levels.items():
        commands.append(("HSET", current, f"{label}|{name}", repr(float(value)), f"{label}|{name}|at", now))
        commands.append(("HSET", minute, f"g|{label}|{name}", repr(float(value))))
        commands.append(("HSETNX", minute, f"f|{label}|{name}", repr(float(value))))
    commands.append(("EXPIRE", minute, HISTORY_TTL))
    return commands


def _keep(batch: Batch, timings: Timings, levels: Levels) -> None:
    # Not sent: merge back for the next try (newer gauge values win over the old ones).
    with _lock:
        for key, n in batch.items():
            if key in _shipped:  # else reset() ran meanwhile: those counts are gone anyway
                _shipped[key] -= n
        for key, cell in timings.items():
            mine = _durations.setdefault(key, [0] * (len(BUCKETS) + 1))
            for i, n in enumerate(cell):
                mine[i] += n
        for key, value in levels.items():
            _gauges.setdefault(key, value)


def local_counts() -> dict[str, int]:
    """Return this process's counts since it started (for tests and the demo)."""
    with _lock:
        return {f"{label}|{event}": n for (label, event), n in _local.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_counts(raw: dict[Any, Any]) -> dict[str, dict[str, int]]:
    """Return the counters hash ``raw`` as ``{label: {event: n}}``."""
    out: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        label, _, event = _text(field).rpartition("|")
        out.setdefault(label, {})[event] = int(value)
    return out


def parse_durations(raw: dict[Any, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the durations hash ``raw`` as ``{(label, name): {"buckets": [...], "sum": s}}``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for field, value in raw.items():
        rest, _, slot = _text(field).rpartition("|")
        label, _, name = rest.rpartition("|")
        cell = out.setdefault((label, name), {"buckets": [0] * len(BUCKETS), "sum": 0.0})
        if slot == "sum_us":
            cell["sum"] = int(value) / 1_000_000
        elif slot.isdigit() and int(slot) < len(BUCKETS):
            cell["buckets"][int(slot)] = int(value)
    return out


def parse_gauges(raw: dict[Any, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """Return the gauges hash ``raw`` as ``{(label, name): {"value": v, "at": unix time}}``."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for field, value in raw.items():
        text = _text(field)
        if text.endswith("|at"):
            label, _, name = text.removesuffix("|at").rpartition("|")
            out.setdefault((label, name), {"value": 0.0, "at": 0.0})["at"] = float(value)
        else:
            label, _, name = text.rpartition("|")
            out.setdefault((label, name), {"value": 0.0, "at": 0.0})["value"] = float(value)
    return out


def snapshot() -> dict[str, dict[str, int]]:
    """Return the counts of every process, as ``{label: {event: n}}``."""
    from cachepatterns_app.store import get_store

    flush()
    return parse_counts(get_store().execute("HGETALL", _hash_key()) or {})


def durations() -> dict[tuple[str, str], dict[str, Any]]:
    """
    Return the durations of every process, as ``{(label, name): {"buckets": [count
    per bucket of BUCKETS], "sum": seconds}}``.
    """
    from cachepatterns_app.store import get_store

    flush()
    return parse_durations(get_store().execute("HGETALL", _key("d")) or {})


def gauges() -> dict[tuple[str, str], dict[str, float]]:
    """Return the last value of each gauge, as ``{(label, name): {"value", "at"}}``."""
    from cachepatterns_app.store import get_store

    flush()
    return parse_gauges(get_store().execute("HGETALL", _key("g")) or {})


def history_commands(now: float | None = None) -> tuple[list[int], list[tuple[Any, ...]]]:
    """Return the last :data:`HISTORY_MINUTES` minutes (oldest first) and the reads of their hashes."""
    current = int((time.time() if now is None else now) // 60)
    minutes = list(range(current - HISTORY_MINUTES + 1, current + 1))
    return minutes, [("HGETALL", _minute_key(m)) for m in minutes]


def parse_minute(raw: dict[Any, Any]) -> dict[str, float]:
    """Return one minute's hash with text fields and numbers."""
    return {_text(k): float(v) for k, v in raw.items()}


def history(now: float | None = None) -> list[tuple[int, dict[str, float]]]:
    """Return ``[(minute, {"e|event": n, "g|label|name": v})]`` for the last hour, oldest first."""
    from cachepatterns_app.store import get_store

    flush()
    minutes, commands = history_commands(now)
    replies = get_store().pipeline(commands)
    return [(m, parse_minute(r or {})) for m, r in zip(minutes, replies, strict=True)]


def report() -> dict[str, Any]:
    """
    Return everything the admin page shows, as JSON-able data: counters per label
    and per pattern, durations, write-behind and refresh-ahead activity, Redis
    server facts, the last hour's history and the health checks (the document
    ``?format=json`` and ``cachepatterns_stats --json`` print; see ``metrics``).
    """
    from cachepatterns_app.metrics import collect

    return collect()


def ship_at_exit() -> None:
    """
    Send what is pending, waiting for Redis's reply; never raise. Registered with
    ``atexit`` and called when a Celery pool process shuts down.
    """
    with _lock:
        idle = not (_unshipped() or _durations or _gauges)
    if idle:
        return
    try:
        flush(wait=True)
    except Exception as e:  # noqa: BLE001 - the process is ending: a traceback would help nobody
        logger.warning("Statistics not sent at exit: %s", e)


def _discard_local() -> None:
    """Forget this process's counts without shipping them (forks, tests)."""
    _local.clear()
    _shipped.clear()
    _durations.clear()
    _gauges.clear()


def _forget_parents_counts() -> None:
    # The child inherits a copy of the counters (and maybe a lock held by another
    # thread of the parent): its own counts start from zero under a fresh lock, or
    # both processes would ship the parent's increments.
    global _lock, _last_flush
    _lock = threading.Lock()
    _discard_local()
    _last_flush = time.monotonic()


atexit.register(ship_at_exit)
os.register_at_fork(after_in_child=_forget_parents_counts)


def reset() -> None:
    """Forget the counts, durations, gauges and history, here and in Redis."""
    from cachepatterns_app.store import get_store

    with _lock:
        _discard_local()
    _, reads = history_commands()
    # The minute hashes of the last hour are named by the clock: no SCAN needed.
    keys = [_hash_key(), _key("d"), _key("g"), *(command[1] for command in reads)]
    get_store().execute("DEL", *keys)
