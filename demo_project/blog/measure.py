"""
Measure what a call did: its SQL queries, the cache events it caused (from this
process's ``cachepatterns_app.stats`` counters) and its duration. Used by the
``cachepatterns_demo`` narrative and the per-request headers of the middleware.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import stats

__all__ = ["Reading", "event_totals", "measure", "plural"]


def event_totals() -> Counter[str]:
    """Return this process's cache events so far, summed over every model and key."""
    totals: Counter[str] = Counter()
    for field, n in stats.local_counts().items():
        totals[field.rpartition("|")[2]] += n
    return totals


def plural(n: int, word: str, words: str | None = None) -> str:
    """Return "1 post", "2 posts" (or ``words`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


@dataclass
class Reading:
    """What one measured call did."""

    value: Any
    queries: int
    ms: float
    events: Counter[str]

    @property
    def outcome(self) -> str:
        if self.events["miss"]:
            return "miss"
        if self.events["hit"]:
            return "hit"
        return "not cached"

    def is_(self, outcome: str, queries: int) -> bool:
        """Return whether the call was ``outcome`` ("hit", "miss") with exactly ``queries`` queries."""
        return self.outcome == outcome and self.queries == queries

    def __str__(self) -> str:
        return f"{self.outcome}, {plural(self.queries, 'SQL query', 'SQL queries')}, {self.ms:.1f} ms"


def measure(fn: Callable[[], Any]) -> Reading:
    """Call ``fn`` and return its value with the SQL queries and cache events it caused."""
    before = event_totals()
    with CaptureQueriesContext(connection) as queries:
        start = time.perf_counter()
        value = fn()
        ms = (time.perf_counter() - start) * 1000
    events = event_totals()
    events.subtract(before)
    return Reading(value, len(queries.captured_queries), ms, +events)
