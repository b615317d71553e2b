"""
Leases, lifetimes and when a loaded value may be stored — shared by the row
caches and the decorators.

A *lease* is a token in a side key that a reader takes on a miss (``SET NX PX``):
only its holder loads and fills, the others wait for the fill (single flight),
and every write deletes it, which voids the fill of a reader that loaded before
the write committed (no stale set).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from cachepatterns_app import stats
from cachepatterns_app.batch import has_pending_writes
from cachepatterns_app.conf import get_settings

__all__ = [
    "BUSY",
    "HIT",
    "LEASED",
    "UNSET",
    "await_turn",
    "companion_ttl_ms",
    "fill_allowed",
    "lease_lifetime_ms",
    "ttl_ms",
]

UNSET: Any = object()

#: The states ``read.lua`` and ``family_read.lua`` answer with.
HIT, LEASED, BUSY = 1, 2, 3


def ttl_ms(ttl: int | float | None) -> int:
    """Return ``ttl`` seconds as jittered milliseconds (0: no expiry)."""
    if ttl is None:
        return 0
    jitter = float(get_settings().TTL_JITTER)
    spread = 1.0 + random.uniform(-jitter, jitter) if jitter else 1.0
    return max(1, int(ttl * 1000 * spread))


def companion_ttl_ms(ttl: int) -> int:
    """
    Return the lifetime of a key that must outlive values stored with ``ttl`` ms (a
    version key, a family generation): twice as long plus a lease (0: no expiry).
    """
    return 2 * ttl + lease_lifetime_ms() if ttl else 0


def lease_lifetime_ms() -> int:
    """Return how long a fill lease lives: ``LOCK_TIMEOUT`` in milliseconds."""
    return int(float(get_settings().LOCK_TIMEOUT) * 1000)


def await_turn(read: Callable[[], Any], label: str) -> Any:
    """
    Call ``read`` (a read-or-lease Lua call) until it returns a hit or grants the
    lease, waiting with backoff while another caller holds the lease.

    Return the reply, or None once ``LOCK_TIMEOUT`` has passed without either: a
    holder that died loses its lease at that point, but a caller that has waited
    that long answers from the database instead of waiting more.
    """
    deadline = 0.0
    pause = 0.002
    while True:
        reply = read()
        if reply[0] != BUSY:
            return reply
        now = time.monotonic()
        if not deadline:
            deadline = now + float(get_settings().LOCK_TIMEOUT)
            stats.record("wait", label)
        elif now >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# Isolation levels under which every statement sees the latest committed rows.
_STATEMENT_SNAPSHOT = {"read committed", "read uncommitted"}


def fill_allowed(using: str) -> bool:
    """
    Return whether a value loaded now through ``using`` may be stored in the cache.

    Not inside a transaction that already wrote a cached model (it would cache
    uncommitted data), nor inside a transaction whose reads come from a snapshot
    older than the lease (SQLite, or MySQL/PostgreSQL at REPEATABLE READ and above).
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        # Autocommit off (manual transactions): the read may see uncommitted writes.
        return bool(connection.get_autocommit())
    if has_pending_writes(using):
        return False
    vendor = connection.vendor
    if vendor == "mysql":
        return str(getattr(connection, "isolation_level", "") or "") in _STATEMENT_SNAPSHOT
    if vendor == "postgresql":
        level = connection.settings_dict.get("OPTIONS", {}).get("isolation_level")
        if level is None:
            return True  # Django's default is the server's: READ COMMITTED unless changed
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        # By name: psycopg2 and psycopg 3 number the levels differently.
        return IsolationLevel(level) in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
    return False
