"""
The Redis side of write-behind: queueing writes, reading the queue through its
consumer group, acknowledging, reclaiming what a dead worker held, dead letters.

The queue of a model is a Redis Stream read by the consumer group
``cachepatterns``. An entry is acknowledged (``XACK``) and deleted (``XDEL``) only
after the database committed it, so ``XLEN`` is the number of writes not flushed yet
and the oldest entry's id tells how long the oldest one has waited. An entry that a
worker read and never acknowledged (it died, or the write keeps failing) stays in the
group's pending list, where another flush claims it once it has been idle long
enough — longer each time it fails (exponential backoff with jitter).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.keys import WriteBehindKeys
from cachepatterns_app.patterns.write_behind.state import as_mapping
from cachepatterns_app.store import Store

__all__ = ["Entry", "Queue", "consumer_name"]

logger = logging.getLogger(__name__)


def consumer_name() -> str:
    """Return this process's consumer name in the group (host and pid: unique and readable)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Entry:
    """One queued write, as read from the stream."""

    id: str
    state: dict[str, str]
    deliveries: int = 1
    seq: int = field(init=False)

    def __post_init__(self) -> None:
        self.seq = int(self.state.get("~s", "0") or 0)

    @property
    def deleted(self) -> bool:
        return self.state.get("~f") == "x"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Queue:
    """The stream, sequence and dead letters of one model in one database."""

    def __init__(self, store: Store, keys: WriteBehindKeys) -> None:
        self.store = store
        self.keys = keys

    # -- writing ----------------------------------------------------------------------

    def next_seq(self) -> int:
        """Draw a sequence number for a write that goes to the database directly."""
        return int(self.store.script("wb_seq", (self.keys.seq,)))

    # -- reading the group --------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing: after a Redis restart too."""
        try:
            self.store.execute("XGROUP", "CREATE", self.keys.stream, self.keys.GROUP, "0", "MKSTREAM")
        except CacheUnavailable as e:
            if "BUSYGROUP" in str(e):
                return
            if "maxmemory" in str(e):
                # Redis at maxmemory refuses XGROUP CREATE before it would say the group
                # exists; the flush, which frees memory, must still run. A missing group
                # shows as NOGROUP on the first read, which creates it again then.
                logger.info(
                    "Write-behind queue %s: XGROUP CREATE refused at maxmemory; going on", self.keys.stream
                )
                return
            raise

    def _group_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.store.call(method, *args, **kwargs)
        except CacheUnavailable as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream or its group is gone (Redis restarted without them): recreate.
            logger.warning("Write-behind queue %s had no consumer group; recreated", self.keys.stream)
            self.ensure_group()
            return self.store.call(method, *args, **kwargs)

    def read_new(self, consumer: str, count: int) -> list[Entry]:
        """Deliver up to ``count`` entries no consumer has read yet to ``consumer``."""
        reply = self._group_call(
            "xreadgroup", self.keys.GROUP, consumer, {self.keys.stream: ">"}, count=count
        )
        return self._entries(reply)

    def peek(self, after: str, count: int) -> list[Entry]:
        """Return up to ``count`` entries after id ``after`` ("" from the start), delivering none."""
        reply = self.store.call("xrange", self.keys.stream, f"({after}" if after else "-", "+", count=count)
        return [Entry(_text(entry_id), _fields(fields)) for entry_id, fields in reply or [] if fields]

    def read_own(self, consumer: str, count: int) -> list[Entry]:
        """Re-read the entries delivered to ``consumer`` and not acknowledged (its own backlog)."""
        reply = self._group_call(
            "xreadgroup", self.keys.GROUP, consumer, {self.keys.stream: "0"}, count=count
        )
        return self._entries(reply)

    def claim_due(self, consumer: str, count: int, idle: float) -> list[Entry]:
        """
        Claim pending entries whose backoff is over: idle for ``idle`` seconds times two
        to the power of their failed deliveries (with ±20 % jitter), from any consumer.
        """
        pending = self._group_call(
            "xpending_range", self.keys.stream, self.keys.GROUP, "-", "+", count, idle=int(idle * 1000)
        )
        due: list[str] = []
        deliveries: dict[str, int] = {}
        for item in pending or []:
            entry_id, idle_ms, times = (
                _text(item["message_id"]),
                item["time_since_delivered"],
                item["times_delivered"],
            )
            wait_ms = idle * 1000 * (2 ** max(0, int(times) - 1)) * random.uniform(0.8, 1.2)
            if int(idle_ms) >= min(wait_ms, 3600_000):
                due.append(entry_id)
                deliveries[entry_id] = int(times) + 1
        if not due:
            return []
        claimed = self._group_call(
            "xclaim", self.keys.stream, self.keys.GROUP, consumer, int(idle * 1000), due
        )
        entries = []
        for item in claimed or []:
            if not item or not item[1]:
                continue  # deleted meanwhile (acknowledged by its first reader)
            entry_id = _text(item[0])
            entries.append(Entry(entry_id, _fields(item[1]), deliveries.get(entry_id, 2)))
        return entries

    def _entries(self, reply: Any) -> list[Entry]:
        out: list[Entry] = []
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        for _stream, items in streams:
            if (
                isinstance(items, list)
                and items
                and isinstance(items[0], list)
                and len(items) == 1
                and not items[0]
            ):
                continue
            for item in items:
                entry_id, fields = item[0], item[1]
                if fields:
                    out.append(Entry(_text(entry_id), _fields(fields)))
        return out

    # -- after the commit ---------------------------------------------------------------

    def acknowledge(self, ids: Sequence[str], then: Sequence[tuple[Any, ...]] = ()) -> None:
        """
        Acknowledge and delete ``ids``: the database holds them (or something newer);
        then run the commands ``then`` (``Store.pipeline`` form), in the same round trip.
        """
        commands: list[tuple[Any, ...]] = []
        if ids:
            commands += [
                ("XACK", self.keys.stream, self.keys.GROUP, *ids),
                ("XDEL", self.keys.stream, *ids),
                ("HDEL", self.keys.errors, *ids),
            ]
        self.store.pipeline([*commands, *then])

    def record_failure(self, entry: Entry, error: str) -> None:
        self.store.execute("HSET", self.keys.errors, entry.id, f"{entry.deliveries}|{error[:500]}")

    def dead_letter(self, entry: Entry, error: str) -> None:
        """Move ``entry`` to the dead letters (with its error) and out of the queue."""
        fields = [item for pair in entry.state.items() for item in pair]
        self.store.pipeline(
            [
                (
                    "XADD",
                    self.keys.dead,
                    "*",
                    *fields,
                    "~id",
                    entry.id,
                    "~error",
                    error[:2000],
                    "~attempts",
                    entry.deliveries,
                    "~at",
                    int(time.time()),
                ),
                ("XACK", self.keys.stream, self.keys.GROUP, entry.id),
                ("XDEL", self.keys.stream, entry.id),
                ("HDEL", self.keys.errors, entry.id),
            ]
        )

    # -- the operator's view -----------------------------------------------------------

    def length(self) -> int:
        return int(self.store.execute("XLEN", self.keys.stream) or 0)

    def low_water(self) -> int | None:
        """
        Return the lowest sequence a still-queued write can carry (None: unknown). Dead
        letters do not count: a replay queues them again as new writes.
        """
        found = self.store.script("wb_low_water", (self.keys.stream, self.keys.seq))
        return int(found) if found else None

    def oldest_age(self) -> float | None:
        """Return the age in seconds of the oldest write not flushed (None: none waiting)."""
        return self.backlog()[0]

    def backlog(self) -> tuple[float | None, int]:
        """Return (age in seconds of the oldest waiting write or None, waiting writes), in one round trip."""
        oldest, now_s, now_us, length = self.store.script("wb_backlog", (self.keys.stream,))
        if not oldest:
            return None, int(length or 0)
        millis = int(_text(oldest).split("-")[0])
        return max(0.0, int(now_s) + int(now_us) / 1e6 - millis / 1000), int(length or 0)

    def pending_summary(self) -> tuple[int, int]:
        """Return (entries delivered and not acknowledged, consumers holding some)."""
        try:
            summary = self.store.call("xpending", self.keys.stream, self.keys.GROUP)
        except CacheUnavailable as e:
            if "NOGROUP" in str(e) or "no such key" in str(e).lower():
                return 0, 0
            raise
        return int(summary.get("pending") or 0), len(summary.get("consumers") or [])

    def dead_letters(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        reply = self.store.call("xrange", self.keys.dead, "-", "+", count=limit)
        return [(_text(entry_id), _fields(fields)) for entry_id, fields in reply or []]

    def dead_count(self) -> int:
        return int(self.store.execute("XLEN", self.keys.dead) or 0)


def _fields(fields: Any) -> dict[str, str]:
    """Return an entry's fields (redis-py parses them to a dict) as text."""
    if isinstance(fields, dict):
        try:
            # The common case (a flush reads hundreds at a time): bytes both sides.
            return {k.decode(): v.decode() for k, v in fields.items()}
        except AttributeError:
            return {_text(k): _text(v) for k, v in fields.items()}
    return as_mapping(fields)


def is_group_error(error: Exception) -> bool:
    return isinstance(error, redis_errors.ResponseError) and "NOGROUP" in str(error)
