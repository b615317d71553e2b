"""``manage.py cachepatterns_stats [--json]``: the cache's counters, summed over processes."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app import stats
from cachepatterns_app.exceptions import CacheUnavailable


class Command(BaseCommand):
    help = "Show cache hits, misses, fills, invalidations and failures per model or key template."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = stats.snapshot()
        except CacheUnavailable as e:
            raise CommandError(f"Cannot read statistics: {e}") from e
        if options["json"]:
            self.stdout.write(json.dumps(counts, indent=2, sort_keys=True))
            return
        if not counts:
            self.stdout.write("No statistics yet (nothing was read through the cache, or STATS is False).")
            return
        events = [e for e in stats.EVENTS if any(e in row for row in counts.values())]
        width = max(len(label) for label in counts)
        self.stdout.write(
            " ".join([f"{'label':<{width}}", *[f"{e:>12}" for e in events], f"{'hit rate':>9}"])
        )
        for label in sorted(counts):
            row = counts[label]
            reads = row.get("hit", 0) + row.get("miss", 0)
            rate = f"{100 * row.get('hit', 0) / reads:.1f}%" if reads else "-"
            cells = [f"{row.get(e, 0):>12}" for e in events]
            self.stdout.write(" ".join([f"{label:<{width}}", *cells, f"{rate:>9}"]))
