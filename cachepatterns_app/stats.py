"""
Count what the cache does: hits, misses, fills, invalidations, failures.

Counting must not cost a round trip on the hit path, so each process keeps its
counters in memory and ships the increments to one Redis hash at most once a
second, piggy-backed on ``CLIENT REPLY SKIP`` (no reply is awaited). The admin
page and ``cachepatterns_stats`` read that hash, which sums every process.

A process can end before its next shipment: a ``manage.py`` command, a
``shell -c``, a script, a Celery pool process. So what is pending is also shipped
when the interpreter exits (``atexit``), when a Celery task ends and when a pool
process shuts down (``cachepatterns_app.celery.connect_signals``). None of these
adds anything to the hit path. A forked child starts with no counts of its own:
what its parent counted before the fork is the parent's to ship.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from cachepatterns_app.conf import get_settings

__all__ = ["EVENTS", "flush", "local_counts", "record", "reset", "ship_at_exit", "snapshot"]

logger = logging.getLogger(__name__)

#: The events counted, with what each means (shown on the admin page).
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
}

FLUSH_EVERY = 1.0

_lock = threading.Lock()
_pending: Counter[str] = Counter()
_local: Counter[str] = Counter()
_last_flush = time.monotonic()


def _hash_key() -> str:
    return f"{get_settings().key_prefix}:{{stats}}"


def record(event: str, label: str, n: int = 1) -> None:
    """Count ``n`` occurrences of ``event`` for ``label`` (a model or key template)."""
    settings = get_settings()
    if not settings.STATS:
        return
    field = f"{label}|{event}"
    global _last_flush
    with _lock:
        _pending[field] += n
        _local[field] += n
        due = time.monotonic() - _last_flush >= FLUSH_EVERY
        if due:
            _last_flush = time.monotonic()
    if due:
        flush(wait=False)


def flush(*, wait: bool = True) -> None:
    """Send this process's pending increments to Redis."""
    from cachepatterns_app.exceptions import CacheUnavailable
    from cachepatterns_app.store import get_store

    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return
    key = _hash_key()
    commands = [("HINCRBY", key, field, n) for field, n in batch.items()]
    store = get_store()
    if wait:
        try:
            store.pipeline(commands)
        except CacheUnavailable as e:
            logger.info("Statistics not sent (%s); they are kept for the next try", e)
            with _lock:
                _pending.update(batch)
    elif not store.send_no_reply(commands):
        with _lock:
            _pending.update(batch)


def local_counts() -> dict[str, int]:
    """Return this process's counts since it started (for tests and the demo)."""
    with _lock:
        return dict(_local)


def snapshot() -> dict[str, dict[str, int]]:
    """Return the counts of every process, as ``{label: {event: n}}``."""
    from cachepatterns_app.store import get_store

    flush()
    raw: dict[Any, Any] = get_store().execute("HGETALL", _hash_key()) or {}
    out: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        text = field.decode() if isinstance(field, bytes) else str(field)
        label, _, event = text.rpartition("|")
        out.setdefault(label, {})[event] = int(value)
    return out


def ship_at_exit() -> None:
    """
    Send what is pending, waiting for Redis's reply; never raise. Registered with
    ``atexit`` and called when a Celery pool process shuts down.
    """
    if not _pending:
        return
    try:
        flush(wait=True)
    except Exception as e:  # noqa: BLE001 - the process is ending: a traceback would help nobody
        logger.warning("Statistics not sent at exit: %s", e)


def _forget_parents_counts() -> None:
    # The child inherits a copy of the counters (and maybe a lock held by another
    # thread of the parent): its own counts start from zero under a fresh lock, or
    # both processes would ship the parent's increments.
    global _lock, _last_flush
    _lock = threading.Lock()
    _pending.clear()
    _local.clear()
    _last_flush = time.monotonic()


atexit.register(ship_at_exit)
os.register_at_fork(after_in_child=_forget_parents_counts)


def reset() -> None:
    """Forget the counts, here and in Redis."""
    from cachepatterns_app.store import get_store

    with _lock:
        _pending.clear()
        _local.clear()
    get_store().execute("DEL", _hash_key())
