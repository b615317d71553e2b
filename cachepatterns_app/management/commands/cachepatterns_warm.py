"""
``manage.py cachepatterns_warm <app.Model> [--batch N] [--resume | --start-after PK]``:
load a cached model's rows into the cache ahead of traffic, with a progress bar and
a summary.

Rows are read in primary-key order a batch at a time (memory holds one batch);
rows already cached are left alone. After each batch the last primary key is
saved in Redis, so an interrupted warm (Ctrl-C, a deploy, Redis going away)
continues with ``--resume``.
"""

from __future__ import annotations

import time
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app import maintenance
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store

BAR = 30


class Command(BaseCommand):
    help = "Load every row of a cached model into the cache (resumable, a batch at a time)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "model", help="app_label.Model (a model with CacheAsideManager/WriteThroughManager)"
        )
        parser.add_argument("--batch", type=int, default=1000, help="rows per batch (default 1000)")
        start = parser.add_mutually_exclusive_group()
        start.add_argument("--resume", action="store_true", help="continue after the last finished batch")
        start.add_argument("--start-after", help="start after this primary key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            model = apps.get_model(options["model"])
        except (LookupError, ValueError) as e:
            raise CommandError(f"{options['model']!r} is not a model (use app_label.Model): {e}") from e
        if row_cache_for(model) is None:
            raise CommandError(
                f"{model._meta.label} is not cached (no CacheAsideManager/WriteThroughManager)."
            )
        if options["batch"] < 1:
            raise CommandError("--batch must be at least 1.")
        label = model._meta.label
        try:
            get_store().execute("PING")
            start = options["start_after"]
            if options["resume"]:
                start = maintenance.checkpoint(model)
                if start is None:
                    self.stdout.write(
                        f"No interrupted warm of {label} to resume; starting from the first row."
                    )
            elif start is not None:
                start = model._meta.pk.to_python(start)
        except CacheUnavailable as e:
            raise CommandError(f"Redis is unavailable, nothing was warmed: {e}") from e
        started = time.monotonic()
        progress = maintenance.Progress(total=0, last_pk=start)
        try:
            for progress in maintenance.warm(model, options["batch"], start):
                self._bar(progress)
                if get_store().breaker.state != "closed":
                    raise CacheUnavailable("the circuit breaker opened during the batch")
        except CacheUnavailable as e:
            self.stdout.write("")
            raise CommandError(
                f"Redis became unavailable after {progress.done} row(s) ({e}). Run again with --resume "
                f"(or --start-after {progress.last_pk}) to continue."
            ) from e
        except KeyboardInterrupt:
            self.stdout.write("")
            raise CommandError(
                f"Interrupted after {progress.done} row(s); continue with --resume "
                f"(or --start-after {progress.last_pk})."
            ) from None
        if not progress.total:
            self.stdout.write(f"{label} has no rows" + (f" after {start}." if start is not None else "."))
            return
        self.stdout.write("")
        self.stdout.write(
            f"Warmed {progress.done} {label} row(s) in {time.monotonic() - started:.1f} s: "
            f"{progress.loaded} loaded into the cache, {progress.cached} already cached."
        )

    def _bar(self, progress: maintenance.Progress) -> None:
        total = max(progress.total, progress.done, 1)
        filled = BAR * progress.done // total
        share = 100 * progress.done // total
        line = f"[{'#' * filled}{'.' * (BAR - filled)}] {share:3d}% {progress.done}/{total} rows"
        # A terminal redraws one line; a log or a pipe gets one line per batch.
        if self.stdout.isatty():
            self.stdout.write("\r" + line, ending="")
        else:
            self.stdout.write(line)
        self.stdout.flush()
