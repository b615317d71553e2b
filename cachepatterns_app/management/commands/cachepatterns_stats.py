"""
``manage.py cachepatterns_stats [--json]``: the cache's statistics, summed over
every process — the admin page's report (``stats.report()``) as text, or as the
same JSON document ``?format=json`` returns.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app import stats
from cachepatterns_app.templatetags.cachepatterns_admin import age, duration, percent

#: The counters shown as columns (others are listed after the table).
COLUMNS = ("hit", "miss", "fill", "wait", "stale_refused", "stale_served", "invalidation", "degraded")


class Command(BaseCommand):
    help = (
        "Show the cache's statistics per model, family and function (hits, misses, hit rate, fills, "
        "invalidations...), durations, write-behind, Redis and the health findings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON (as ?format=json).")

    def handle(self, *args: Any, **options: Any) -> None:
        report = stats.report()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
            return
        if report["error"] and not report["redis"].get("available"):
            raise CommandError(
                f"Cannot read statistics: Redis is unavailable ({report['redis'].get('error')})."
            )
        self._labels(report)
        self._durations(report)
        self._write_behind(report)
        self._redis(report)
        self.stdout.write("\nHealth:")
        for finding in report["health"] or [
            {"level": "ok", "title": "nothing needs your attention", "detail": ""}
        ]:
            self.stdout.write(f"  [{finding['level']}] {finding['title']}. {finding['detail']}".rstrip())

    def _labels(self, report: dict[str, Any]) -> None:
        labels = report["labels"]
        if not labels:
            self.stdout.write("No statistics yet (nothing was read through the cache, or STATS is False).")
            return
        events = [e for e in COLUMNS if any(e in row["events"] for row in labels.values())]
        width = max(len("label"), *(len(label) for label in labels))
        header = [f"{'label':<{width}}", f"{'kind':<8}", f"{'pattern':<13}", *[f"{e:>13}" for e in events]]
        self.stdout.write(" ".join([*header, f"{'hit rate':>9}"]))
        for label, row in labels.items():
            cells = [f"{row['events'].get(e, 0):>13}" for e in events]
            line = [f"{label:<{width}}", f"{row['kind']:<8}", f"{row['pattern']:<13}", *cells]
            self.stdout.write(" ".join([*line, f"{percent(row['hit_rate']):>9}"]))
            other = {e: n for e, n in row["events"].items() if e not in COLUMNS}
            if other:
                self.stdout.write("    " + ", ".join(f"{e} {n}" for e, n in other.items()))
        total = report["totals"]
        self.stdout.write(f"Total hit rate: {percent(total['hit_rate'])}")

    def _durations(self, report: dict[str, Any]) -> None:
        if not report["durations"]:
            return
        self.stdout.write("\nDurations (count, mean, p50, p90, p99):")
        for d in report["durations"]:
            cells = ", ".join(duration(d[k]) for k in ("mean", "p50", "p90", "p99"))
            self.stdout.write(f"  {d['label']} {d['name']}: {d['count']}, {cells}")

    def _write_behind(self, report: dict[str, Any]) -> None:
        wb = report["write_behind"]
        if not wb["enabled"] and not any(wb["events"].values()):
            return
        self.stdout.write(
            f"\nWrite-behind: {wb['pending']} pending, oldest {age(wb['oldest_pending_age'])}, "
            f"{wb['dead_letter_count']} dead letter(s)"
        )
        for m in wb["models"]:
            self.stdout.write(
                f"  {m.get('label')}: {m.get('pending')} pending, oldest {age(m.get('oldest_pending_age'))}, "
                f"{m.get('dead_letters')} dead letter(s)"
            )

    def _redis(self, report: dict[str, Any]) -> None:
        r = report["redis"]
        if not r.get("available"):
            self.stdout.write(f"\nRedis: unavailable ({r.get('error')})")
            return
        self.stdout.write(
            f"\nRedis {r['version']} ({r['role']}): {r['connected_clients']} clients, "
            f"{r['used_memory_human']} used (peak {r['used_memory_peak_human']}), "
            f"maxmemory {r['maxmemory_human'] if r['maxmemory'] else 'none'} "
            f"policy {r['maxmemory_policy'] or 'unknown'}, persistence {r['persistence']}, "
            f"keyspace hit rate {percent(r['keyspace_hit_rate'])}, "
            f"evicted {r['evicted_keys']}, expired {r['expired_keys']}"
        )
